"""Starts, feeds, supervises and stops the fast-path processes (one per core).

Each fast-path process gets, by fd inheritance: its TAP queue, the
stack-private region, the slow path's doorbell, its own doorbell and one
end of a SOCK_SEQPACKET control pair.  Context regions reach it later over
that pair with SCM_RIGHTS (`add_ctx`), acknowledged before the app is told
its context exists, so the fast path never sees a flow whose buffers it
has not mapped.

Every fd a fast path inherits is owned here (or by the stack), never by the
fast path alone: the TAP queue, the stack region and both doorbells outlive
a fast-path process.  So a fast path that dies (``kill -9``) is restarted
on the same fds by :meth:`restart` with all shared state intact (flow
table, rings and counters live in the stack region; the TAP keeps its
queue because the slow path holds it open; apps keep ringing the same
doorbell eventfd).  The caller re-sends ``add_ctx`` for every live context
(:meth:`restart` takes them) and repairs what the dead process may have
left half-done (see kernel_slowpath/stack.py ``_repair_after_fp_death``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable

log = logging.getLogger("tas.fpm")


class FastPathError(RuntimeError):
    pass


class FastPathManager:
    def __init__(self, *, n_cores: int, tap_fds: list[int], stack_fd: int, stack_size: int,
                 n_flows: int, kq_slots: int, sp_evfd: int, local_ip: int, mac: str,
                 poll_us: int, cpus: list[int]) -> None:
        self.n_cores = n_cores
        self.tap_fds = list(tap_fds)
        self.stack_fd = stack_fd
        self.stack_size = stack_size
        self.n_flows = n_flows
        self.kq_slots = kq_slots
        self.sp_evfd = sp_evfd
        self.local_ip = local_ip
        self.mac = mac
        self.poll_us = poll_us
        self.cpus = cpus
        self.evfds: list[int] = []
        self.procs: list[subprocess.Popen] = []
        self.ctls: list[socket.socket] = []
        self.restarts = [0] * n_cores
        for core in range(n_cores):
            self.evfds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            proc, mine = self._spawn(core)
            self.procs.append(proc)
            self.ctls.append(mine)

    def _spawn(self, core: int) -> tuple[subprocess.Popen, socket.socket]:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        evfd = self.evfds[core]
        cpu = self.cpus[core % len(self.cpus)]
        fds = [self.tap_fds[core], self.stack_fd, self.sp_evfd, evfd, theirs.fileno()]
        argv = [sys.executable, "-m", "flextcp",
                "--core", str(core), "--n-cores", str(self.n_cores),
                "--stack-fd", str(self.stack_fd), "--stack-size", str(self.stack_size),
                "--n-flows", str(self.n_flows), "--kq-slots", str(self.kq_slots),
                "--tap-fd", str(self.tap_fds[core]), "--sp-evfd", str(self.sp_evfd),
                "--fp-evfd", str(evfd), "--ctl-fd", str(theirs.fileno()),
                "--ip", str(self.local_ip), "--mac", self.mac, "--cpu", str(cpu),
                "--poll-us", str(self.poll_us)]
        try:
            proc = subprocess.Popen(argv, pass_fds=fds, close_fds=True)
        finally:
            theirs.close()
        log.info("fast path core %d: pid %d on cpu %d", core, proc.pid, cpu)
        return proc, mine

    def alive(self) -> list[bool]:
        return [p.poll() is None for p in self.procs]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def restart(self, core: int, contexts: Iterable[tuple[int, int, int, int, int]]) -> None:
        """Replace the (dead) fast path of ``core`` by a new process on the
        same TAP queue, stack region and doorbells, then give it every live
        context: ``contexts`` yields (ctx_id, memfd, app_evfd, atx_slots,
        arx_slots).  Raises FastPathError if the new process fails too."""
        old = self.procs[core]
        if old.poll() is None:  # not dead yet: make it so (we own it)
            old.kill()
        old.wait()
        self.ctls[core].close()
        proc, mine = self._spawn(core)
        self.procs[core] = proc
        self.ctls[core] = mine
        self.restarts[core] += 1
        for ctx_id, memfd, evfd, atx, arx in contexts:
            # the new process answers once it has started (slow on a loaded machine)
            if not self._add_ctx_core(core, ctx_id, memfd, evfd, atx, arx, timeout=30.0):
                raise FastPathError(f"restarted fast path core {core} refused context {ctx_id}")
        self.kick(core)

    def _call(self, core: int, msg: dict, fds: list[int] | None = None, timeout: float = 5.0) -> bool:
        sock = self.ctls[core]
        data = json.dumps(msg).encode()
        try:
            if fds:
                socket.send_fds(sock, [data], fds)
            else:
                sock.send(data)
        except OSError as e:
            raise FastPathError(f"fast path core {core}: {e}") from None
        sock.settimeout(timeout)
        try:
            reply = sock.recv(65536)
        except TimeoutError:
            raise FastPathError(f"fast path core {core} did not answer {msg['op']}") from None
        except OSError as e:
            raise FastPathError(f"fast path core {core}: {e}") from None
        finally:
            sock.settimeout(None)
        if not reply:
            raise FastPathError(f"fast path core {core} exited")
        return bool(json.loads(reply).get("ok"))

    def _add_ctx_core(self, core: int, ctx_id: int, memfd: int, app_evfd: int, atx_slots: int,
                      arx_slots: int, timeout: float = 5.0) -> bool:
        size = os.fstat(memfd).st_size
        return self._call(core, {"op": "add_ctx", "ctx": ctx_id, "size": size,
                                 "atx": atx_slots, "arx": arx_slots}, [memfd, app_evfd], timeout=timeout)

    def add_ctx(self, ctx_id: int, memfd: int, app_evfd: int, atx_slots: int, arx_slots: int) -> None:
        for core in range(self.n_cores):
            if not self._add_ctx_core(core, ctx_id, memfd, app_evfd, atx_slots, arx_slots):
                raise FastPathError(f"fast path core {core} refused context {ctx_id}")
        self.kick_all()

    def remove_ctx(self, ctx_id: int) -> None:
        for core in range(self.n_cores):
            try:
                self._call(core, {"op": "remove_ctx", "ctx": ctx_id})
            except (FastPathError, OSError) as e:
                log.warning("remove_ctx %d on core %d: %s", ctx_id, core, e)

    def kick(self, core: int) -> None:
        try:
            os.eventfd_write(self.evfds[core], 1)
        except OSError:
            pass

    def kick_all(self) -> None:
        for core in range(self.n_cores):
            self.kick(core)

    def stop(self, timeout: float = 3.0) -> None:
        for core, sock in enumerate(self.ctls):
            try:
                sock.send(json.dumps({"op": "stop"}).encode())
            except OSError:
                pass
            self.kick(core)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for sock in self.ctls:
            sock.close()
        for fd in self.evfds:
            os.close(fd)
        self.ctls, self.evfds = [], []
