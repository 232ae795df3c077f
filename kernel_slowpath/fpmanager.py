"""Starts, feeds and stops the fast-path processes (one per core).

Each fast-path process gets, by fd inheritance: its TAP queue, the
stack-private region, the slow path's doorbell, its own doorbell and one
end of a SOCK_SEQPACKET control pair.  Context regions reach it later over
that pair with SCM_RIGHTS (`add_ctx`), acknowledged before the app is told
its context exists, so the fast path never sees a flow whose buffers it
has not mapped.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

log = logging.getLogger("tas.fpm")


class FastPathError(RuntimeError):
    pass


class FastPathManager:
    def __init__(self, *, n_cores: int, tap_fds: list[int], stack_fd: int, stack_size: int,
                 n_flows: int, kq_slots: int, sp_evfd: int, local_ip: int, mac: str,
                 poll_us: int, cpus: list[int]) -> None:
        self.n_cores = n_cores
        self.evfds: list[int] = []
        self.procs: list[subprocess.Popen] = []
        self.ctls: list[socket.socket] = []
        for core in range(n_cores):
            evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            fds = [tap_fds[core], stack_fd, sp_evfd, evfd, theirs.fileno()]
            argv = [sys.executable, "-m", "flextcp",
                    "--core", str(core), "--n-cores", str(n_cores),
                    "--stack-fd", str(stack_fd), "--stack-size", str(stack_size),
                    "--n-flows", str(n_flows), "--kq-slots", str(kq_slots),
                    "--tap-fd", str(tap_fds[core]), "--sp-evfd", str(sp_evfd),
                    "--fp-evfd", str(evfd), "--ctl-fd", str(theirs.fileno()),
                    "--ip", str(local_ip), "--mac", mac, "--cpu", str(cpus[core % len(cpus)]),
                    "--poll-us", str(poll_us)]
            proc = subprocess.Popen(argv, pass_fds=fds, close_fds=True)
            theirs.close()
            self.evfds.append(evfd)
            self.procs.append(proc)
            self.ctls.append(mine)
            log.info("fast path core %d: pid %d on cpu %d", core, proc.pid, cpus[core % len(cpus)])

    def alive(self) -> list[bool]:
        return [p.poll() is None for p in self.procs]

    def _call(self, core: int, msg: dict, fds: list[int] | None = None, timeout: float = 5.0) -> bool:
        sock = self.ctls[core]
        data = json.dumps(msg).encode()
        if fds:
            socket.send_fds(sock, [data], fds)
        else:
            sock.send(data)
        sock.settimeout(timeout)
        try:
            reply = sock.recv(65536)
        except TimeoutError:
            raise FastPathError(f"fast path core {core} did not answer {msg['op']}") from None
        finally:
            sock.settimeout(None)
        if not reply:
            raise FastPathError(f"fast path core {core} exited")
        return bool(json.loads(reply).get("ok"))

    def add_ctx(self, ctx_id: int, memfd: int, app_evfd: int, atx_slots: int, arx_slots: int) -> None:
        size = os.fstat(memfd).st_size
        for core in range(self.n_cores):
            ok = self._call(core, {"op": "add_ctx", "ctx": ctx_id, "size": size,
                                   "atx": atx_slots, "arx": arx_slots}, [memfd, app_evfd])
            if not ok:
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
