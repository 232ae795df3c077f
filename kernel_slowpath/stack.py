"""`tas start`: the slow-path control process and everything it owns.

Order of bring-up: validate (root, /dev/net/tun, address, state dir lock),
open the TAP, create the stack region (flow table, KRX/KTX rings,
counters), start the fast-path processes, start the engine and the
control socket, announce ourselves with a gratuitous ARP, print `ready`.
Tear-down runs in reverse on SIGINT/SIGTERM: reset open flows, stop the
fast paths, close (and so unlink) every memfd, remove a TAP we created.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import ipaddress
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flextcp.flowtab import FlowTable
from flextcp.native import ffi, lib
from flextcp.ring import Ring
from flextcp.shm import Region
from flextcp.stackmem import stack_layout
from kernel_slowpath.engine import Engine
from kernel_slowpath.fpmanager import FastPathManager
from kernel_slowpath.server import AppLimits, ControlServer
from nicemu import tap as tapmod

log = logging.getLogger("tas")

DEFAULT_STATE_DIR = "/run/tas/default"
FP_RESTART_WINDOW_S = 60.0
# a flow lock still held after this many 1 ms samples belongs to a dead process
STALE_LOCK_SAMPLES = 20
KRX_BATCH = 32  # KRX entries the slow path takes per dequeue


# The cyclic garbage collector: the slow path makes a few objects per
# connection (Conn, HalfOpen, event dicts), almost none of them in cycles,
# and keeps 65k connections' worth alive: at Python's default gen-0
# threshold (700) collections ran every few connections, ~3.5% of the slow
# path with 65k open flows (issue 5, conns).  Set-up objects are frozen
# out of the collector's view once the stack is up.
GC_THRESHOLDS = (20_000, 20, 20)


class StartError(Exception):
    """A reason `tas start` cannot run, printed as one line."""


@dataclass
class StackConfig:
    tap: str
    ip: str
    prefix: int
    mac: bytes
    gateway: str | None
    fp_cores: int
    state_dir: Path
    n_flows: int = 16384
    kq_slots: int = 1024
    poll_us: int = 500
    rx_buf: int = 256 << 10
    tx_buf: int = 256 << 10
    region_len: int = 256 << 20
    allowed_uids: set[int] | None = None
    allow_privileged_ports: bool = False
    # an app context whose queue entries were invalid (hostile, not merely
    # stale) this many times is disconnected; 0 = never
    strike_limit: int = 1024
    # fast-path restarts allowed within FP_RESTART_WINDOW_S before giving up
    fp_max_restarts: int = 5
    # SO_KEEPALIVE timing (idle s, probe interval s, probes); Linux defaults
    keepalive: tuple = (7200.0, 75.0, 9)
    max_app_contexts: int = 64
    # per-app limits (issue 6, isolation; docs/FAULTS.md "Limits"): None = half
    # the flow table; 0 = no limit
    app_max_flows: int | None = None
    app_max_buf: int = 1 << 30
    app_syn_backlog: int = 1024
    # congestion control (issue 6, docs/CC.md): an algorithm the slow path
    # runs (kernel_slowpath/cc) or "fp-newreno" (the fast path alone)
    cc: str = "cubic"  # docs/CC.md "Default"
    cc_interval_us: int = 1000  # 0: per flow every max(1 ms, srtt)
    cc_rate_bps: int = 0  # --cc const: the fixed rate
    cc_pacing: bool = True
    ecn: bool | None = None  # None: with dctcp only


def default_state_dir() -> Path:
    return Path(os.environ.get("TAS_STATE_DIR") or DEFAULT_STATE_DIR)


def parse_config(tap: str, ip: str, mac: str | None, gateway: str | None, fp_cores: int,
                 state_dir: str | None, **extra) -> StackConfig:
    try:
        iface = ipaddress.IPv4Interface(ip)
    except ValueError:
        raise StartError(f"bad address {ip!r}: expected IPv4 ADDR/PREFIX, e.g. 198.18.0.2/24") from None
    if "/" not in ip:
        raise StartError(f"bad address {ip!r}: the prefix length is required, e.g. {ip}/24")
    if iface.ip == iface.network.network_address or iface.ip == iface.network.broadcast_address \
            and iface.network.prefixlen < 31:
        raise StartError(f"bad address {ip!r}: network or broadcast address")
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise StartError(f"bad gateway {gateway!r}") from None
        if gw not in iface.network:
            raise StartError(f"gateway {gateway} is not in {iface.network}")
    try:
        mac_b = tapmod.parse_mac(mac) if mac else tapmod.default_mac(tap, str(iface.ip))
    except ValueError as e:
        raise StartError(str(e)) from None
    if not 1 <= fp_cores <= 16:
        raise StartError("--fp-cores must be between 1 and 16")
    return StackConfig(tap=tap, ip=str(iface.ip), prefix=iface.network.prefixlen, mac=mac_b, gateway=gateway,
                       fp_cores=fp_cores, state_dir=Path(state_dir) if state_dir else default_state_dir(),
                       **extra)


def check_environment() -> None:
    if os.geteuid() != 0:
        raise StartError("tas start must run as root (it opens a TAP device and pins cores)")
    if not os.path.exists(tapmod.TUN_PATH):
        raise StartError(f"{tapmod.TUN_PATH} is missing: no TUN/TAP support on this machine")


def lock_state_dir(state_dir: Path, shared: bool = False) -> int:
    """Create the state dir (0700; 0711 when other uids are allowed, so they
    can reach the socket but not list the dir), check that nobody but root
    owns or can write it, and take its lock; fail if a live stack holds it.
    The lock dies with the process, so a crashed stack never blocks the next
    start."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(state_dir)
    if not os.path.isdir(state_dir) or os.path.islink(state_dir):
        raise StartError(f"state dir {state_dir} is not a directory")
    if st.st_uid != os.geteuid():
        raise StartError(f"state dir {state_dir} is owned by uid {st.st_uid}, not by us")
    os.chmod(state_dir, 0o711 if shared else 0o700)
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.read(fd, 32).decode().strip() or "?"
        except OSError:
            pid = "?"
        os.close(fd)
        raise StartError(f"state dir {state_dir} is in use by a live stack (pid {pid})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Stack:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.tap: tapmod.Tap | None = None
        self.region: Region | None = None
        self.fpm: FastPathManager | None = None
        self.engine: Engine | None = None
        self.server: ControlServer | None = None
        self.sp_evfd = -1
        self.lock_fd = -1
        self.krx: list[Ring] = []
        self._krx_mem = None
        self._krx_view = None
        self.ktx: list[Ring] = []
        self._stop = asyncio.Event()
        self._pidfds: dict[int, int] = {}
        self._fp_deaths: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, ready_out=sys.stdout) -> int:
        cfg = self.cfg
        check_environment()
        self.lock_fd = lock_state_dir(cfg.state_dir, shared=bool(cfg.allowed_uids - {0})
                                      if cfg.allowed_uids else False)
        try:
            self._bring_up()
            loop = asyncio.get_running_loop()
            self.engine = Engine(ft=self.ft, n_flows=cfg.n_flows, fpm=self.fpm, ktx=self.ktx, loop=loop,
                                 local_ip=cfg.ip, prefix=cfg.prefix, gateway=cfg.gateway, mac=cfg.mac,
                                 rx_buf=cfg.rx_buf, tx_buf=cfg.tx_buf)
            self.engine.core_stats = self.fp_stats
            self.engine.keepalive = cfg.keepalive
            self._setup_cc(loop)
            self.server = ControlServer(cfg.state_dir, self.engine, self.fpm, cfg.ip, tapmod.mac_str(cfg.mac),
                                        region_len=cfg.region_len, allowed_uids=cfg.allowed_uids,
                                        default_buf=cfg.rx_buf,
                                        allow_privileged_ports=cfg.allow_privileged_ports,
                                        strike_limit=cfg.strike_limit,
                                        max_app_contexts=cfg.max_app_contexts,
                                        app_limits=AppLimits(
                                            flows=cfg.n_flows // 2 if cfg.app_max_flows is None
                                            else cfg.app_max_flows,
                                            buf_bytes=cfg.app_max_buf, syn_backlog=cfg.app_syn_backlog),
                                        # room for an event per flow (e.g. all reset at once)
                                        max_outq=max(16384, 2 * cfg.n_flows))
            self.engine.on_ctx_bad = self.server.ctx_strikes
            await self.server.start()
            self._loop = loop
            loop.add_reader(self.sp_evfd, self._on_doorbell)
            self.engine.start()
            if self.engine.cc is not None:
                self.engine.cc.start()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop.set)
            for core in range(cfg.fp_cores):
                self._watch_fp(core)
            watchdog = loop.create_task(self._watch_fastpaths())
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            self._on_doorbell()
            print(f"tas: ready on {cfg.tap} {cfg.ip}/{cfg.prefix} mac {tapmod.mac_str(cfg.mac)} "
                  f"fp-cores {cfg.fp_cores} state-dir {cfg.state_dir}", file=ready_out, flush=True)
            await self._stop.wait()
            watchdog.cancel()
            self._unwatch_fps()
            log.info("stopping: resetting %d open flows", len(self.engine.conns))
            self.engine.reset_all()
            self._drain_ktx_soon()
            loop.remove_reader(self.sp_evfd)
            self.engine.stop()
            if self.engine.cc is not None:
                self.engine.cc.stop()
            await self.server.stop()
            return 0
        finally:
            self._tear_down()

    def _setup_cc(self, loop) -> None:
        """Congestion control in the slow path (kernel_slowpath/ccloop.py)."""
        from kernel_slowpath.ccloop import CCLoop

        cfg = self.cfg
        self.engine.ecn = cfg.ecn if cfg.ecn is not None else cfg.cc == "dctcp"
        # with FP_NEWRENO the loop only resets each flow's side-table entry
        # (the fast path grows cwnd, and halves it on ECN-Echo itself)
        lay = stack_layout(cfg.n_flows, cfg.fp_cores, cfg.kq_slots)
        table = lib.tas_cc_table(self.region.ptr(lay.ft_off), lay.ft_len, cfg.n_flows)
        self.engine.cc = CCLoop(ft=self.ft.raw, cc_table=table, n_flows=cfg.n_flows, algorithm=cfg.cc,
                                interval_us=cfg.cc_interval_us, loop=loop, rate_bps=cfg.cc_rate_bps,
                                pacing=cfg.cc_pacing)

    def _bring_up(self) -> None:
        cfg = self.cfg
        try:
            self.tap = tapmod.open_tap(cfg.tap, cfg.fp_cores)
        except tapmod.TapError as e:
            raise StartError(str(e)) from None
        lay = stack_layout(cfg.n_flows, cfg.fp_cores, cfg.kq_slots)
        self.region = Region.create(lay.size, "stack")
        self.ft = FlowTable.create(self.region, lay.ft_off, cfg.n_flows)
        for c in range(cfg.fp_cores):
            self.krx.append(Ring.create(self.region, lay.krx_off[c], cfg.kq_slots, lib.TAS_KQ_ENTRY_SIZE,
                                        producer=False))
            self.ktx.append(Ring.create(self.region, lay.ktx_off[c], cfg.kq_slots, lib.TAS_KQ_ENTRY_SIZE,
                                        producer=True))
        self.stats_off = lay.stats_off
        self.sp_evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ncpu = os.cpu_count() or 1
        # the slow path keeps CPU 0; fast paths take the others first
        cpus = [c % ncpu for c in range(1, ncpu + 1)] if ncpu > 1 else [0]
        self.fpm = FastPathManager(n_cores=cfg.fp_cores, tap_fds=self.tap.fds, stack_fd=self.region.fd,
                                   stack_size=lay.size, n_flows=cfg.n_flows, kq_slots=cfg.kq_slots,
                                   sp_evfd=self.sp_evfd, local_ip=int(ipaddress.IPv4Address(cfg.ip)),
                                   mac=tapmod.mac_str(cfg.mac), poll_us=cfg.poll_us, cpus=cpus)
        try:
            os.sched_setaffinity(0, {0})
        except OSError:
            pass

    def _on_doorbell(self) -> None:
        try:
            os.eventfd_read(self.sp_evfd)
        except BlockingIOError:
            pass
        mem = self._krx_mem
        if mem is None:  # one buffer for every wake-up (dequeue_n allocates 64 KiB a call)
            mem = self._krx_setup()
        view, on_krx, drain, doorbell = self._krx_view, self.engine.on_krx, lib.tas_sp_krx_drain, lib.tas_sp_doorbell
        st, ftraw, mac, ip = self._drain_stats, self.ft.raw, self._drain_mac, self._drain_ip
        server = self.server
        if server is not None:
            server.draining = True  # the drain's events go out at its end, below
        armed = False
        try:
            while True:
                found = False
                for raw, ktx, core, evfd in self._drain_cores:
                    while True:
                        # ICMP echo requests are answered (and the core kicked) in C on the way (sp_flow.c)
                        n = drain(raw, ktx, mem, KRX_BATCH, mac, ip, st, ftraw, core, evfd)
                        if n:
                            found = True
                            on_krx(view, n)
                        if n < KRX_BATCH:  # drained
                            break
                if armed and not found:
                    break
                # arm the doorbell (a core that posts from now on writes the
                # eventfd), then look once more: a core that posted while we
                # were awake did not write it (struct tas_cc_news_hdr sp_armed)
                doorbell(ftraw, lib.TAS_SP_ARMED)
                armed = True
        finally:
            if server is not None:
                server.draining = False
                server.flush_events_now()  # newconn out before the rest of the loop pass

    def _krx_setup(self):
        """The drain's buffer and arguments (_on_doorbell), made once."""
        engine = self.engine
        mem = self._krx_mem = ffi.new("uint8_t[]", KRX_BATCH * lib.TAS_KQ_ENTRY_SIZE)
        self._krx_view = ffi.buffer(mem)
        self._drain_stats = st = ffi.new("struct tas_sp_drain_stats *")
        engine.drain_stats = st  # its counters (Engine.stats)
        self._drain_mac, self._drain_ip = bytes(engine.mac), engine.local_ip_int
        evfds = self.fpm.evfds if self.fpm is not None else []
        self._drain_cores = [(ring.raw, self.ktx[c].raw, c, evfds[c] if c < len(evfds) else -1)
                             for c, ring in enumerate(self.krx)]
        return mem

    def fp_stats(self) -> list[dict]:
        out = []
        for off in self.stats_off:
            s = self.region.cast("struct tas_fp_stats", off)
            out.append(s)
        return out

    # -- fast-path supervision ------------------------------------------------
    def _watch_fp(self, core: int) -> None:
        """Get told (pidfd readable) the moment the fast path of core exits."""
        try:
            fd = os.pidfd_open(self.fpm.procs[core].pid)
        except OSError:  # already gone (reaped): the polling watchdog sees it
            return
        self._pidfds[core] = fd
        self._loop.add_reader(fd, self._on_fp_exit, core)

    def _unwatch_fps(self) -> None:
        for fd in self._pidfds.values():
            self._loop.remove_reader(fd)
            os.close(fd)
        self._pidfds.clear()

    def _on_fp_exit(self, core: int) -> None:
        fd = self._pidfds.pop(core, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)
        if self._stop.is_set():
            return
        proc = self.fpm.procs[core]
        proc.poll()
        now = time.monotonic()
        self._fp_deaths = [t for t in self._fp_deaths if now - t < FP_RESTART_WINDOW_S] + [now]
        if len(self._fp_deaths) > self.cfg.fp_max_restarts:
            log.error("fast path core %d died (exit %s), %d deaths within %.0f s: resetting all flows "
                      "and stopping", core, proc.returncode, len(self._fp_deaths), FP_RESTART_WINDOW_S)
            self._stop.set()
            return
        log.error("fast path core %d died (exit %s): restarting it with flow state intact",
                  core, proc.returncode)
        try:
            self._repair_after_fp_death()
            live = [(c.ctx_id, c.region.fd, c.evfd, self.server.atx_slots, self.server.arx_slots)
                    for c in list(self.server.contexts.values()) if not c.closed]
            self.fpm.restart(core, live)
        except Exception:
            log.exception("restarting fast path core %d failed: stopping", core)
            self._stop.set()
            return
        log.info("fast path core %d restarted (pid %d), %d context(s) re-attached",
                 core, self.fpm.procs[core].pid, len(live))
        self._watch_fp(core)
        self._kick_flows(list(self.engine.conns.values()), tries=20)
        self._on_doorbell()

    def _repair_after_fp_death(self) -> None:
        """What a fast path killed mid-poll can leave behind in the stack
        region: a flow lock it held (it never holds more than one, for
        microseconds; the slow path never holds one while in Python), and
        flows marked as queued on its private transmit/ACK queues, which
        died with it."""
        ft = self.ft
        held = [fid for fid in range(self.cfg.n_flows) if ft.flow(fid).lock]
        for _ in range(STALE_LOCK_SAMPLES):
            if not held:
                break
            time.sleep(0.001)
            held = [fid for fid in held if ft.flow(fid).lock]
        for fid in held:
            log.warning("flow %d: releasing a lock held by the dead fast path", fid)
            lib.tas_flow_unlock(ft.flow(fid))
        mask = lib.TAS_FF_IN_TXQ | lib.TAS_FF_IN_ACKQ
        for conn in list(self.engine.conns.values()):
            if not conn.installed:
                continue
            f = ft.flow(conn.fid)
            lib.tas_flow_lock(f)
            f.flags &= ~mask & 0xFFFFFFFF
            lib.tas_flow_unlock(f)

    def _kick_flows(self, conns: list, tries: int) -> None:
        """Ask the fast paths to look at every flow again (their transmit
        queues were lost); whatever does not fit in the KTX rings now is
        retried shortly."""
        left = []
        for conn in conns:
            if self.engine.conns.get(conn.fid) is not conn or not conn.installed:
                continue
            if not self.engine._ktx(conn.core, lib.TAS_KTX_KICK, flow_id=conn.fid):
                left.append(conn)
        self.fpm.kick_all()
        if left and tries > 0 and not self._stop.is_set():
            self._loop.call_later(0.02, self._kick_flows, left, tries - 1)

    async def _watch_fastpaths(self) -> None:
        """Backstop for the pidfd watch (e.g. pidfd_open unavailable)."""
        while True:
            await asyncio.sleep(0.5)
            for core, alive in enumerate(self.fpm.alive()):
                if not alive and core not in self._pidfds:
                    self._on_fp_exit(core)

    def _drain_ktx_soon(self) -> None:
        """Give the fast paths a moment to put the final RSTs on the wire."""
        import time

        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and any(r.count() < 0 or r.free() < self.cfg.kq_slots
                                                  for r in self.ktx):
            self.fpm.kick_all()
            time.sleep(0.01)

    def _tear_down(self) -> None:
        if self.fpm:
            self.fpm.stop()
        if self.tap:
            self.tap.close()
        if self.region:
            self.region.close()
        if self.sp_evfd >= 0:
            os.close(self.sp_evfd)
        try:
            (self.cfg.state_dir / "control.sock").unlink()
        except FileNotFoundError:
            pass
        if self.lock_fd >= 0:
            os.close(self.lock_fd)


def run(cfg: StackConfig) -> int:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        return runner(Stack(cfg).run())
    except StartError as e:
        print(f"tas start: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno == errno.EPERM:
            print(f"tas start: permission denied: {e}", file=sys.stderr)
            return 2
        raise
