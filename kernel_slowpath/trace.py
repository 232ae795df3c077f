"""`tas trace`: what the stack sent and received, as a pcap, plus a per-flow
CSV of its congestion state over time.

* Frames are captured on the stack's TAP interface from the kernel side with
  an AF_PACKET socket (run ``tas trace`` in the stack's network namespace):
  frames the stack writes to the TAP show up as received by the kernel,
  frames the kernel forwards to the stack as sent; both directions are in
  the file, written as classic pcap (Ethernet, microsecond timestamps), so
  tcpdump, tshark, wireshark and scapy read it.
* The TAP name is found without asking the user: the control socket's peer
  credentials give the pid of `tas start`, whose open /dev/net/tun file
  descriptors name their interface in /proc/PID/fdinfo (``iff:``).
  ``--iface`` overrides.
* ``--flow ID`` keeps only frames of that flow's 4-tuple (from the stack's
  flow list); ``--all`` keeps every frame (ARP, ICMP, all flows).
* The CSV (default: the pcap name with ``.csv``) samples the stack's flow
  list every ``--interval-ms`` (10 ms default) over the control socket:
  ``t_s, flow, state, cwnd, ssthresh, srtt_us, in_flight, snd_wnd,
  rx_bytes, tx_bytes, retransmits``.  ``scripts/plot.py`` plots it.
"""

from __future__ import annotations

import csv
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535
PACKET_OUTGOING = 4
CSV_FIELDS = [
    "t_s",
    "flow",
    "state",
    "cwnd",
    "ssthresh",
    "srtt_us",
    "in_flight",
    "snd_wnd",
    "rx_bytes",
    "tx_bytes",
    "retransmits",
]


class TraceError(Exception):
    pass


# -- finding the TAP --------------------------------------------------------------------------------


def stack_pid(stack) -> int:
    """The pid of `tas start` behind a libtas Stack (SO_PEERCRED of the control socket)."""
    creds = stack._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return pid


def tap_of_pid(pid: int) -> str | None:
    """The interface of the first /dev/net/tun fd that process ``pid`` holds."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") != "/dev/net/tun":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("iff:"):
                        return line.split()[1]
        except OSError:
            continue
    return None


def find_tap(stack) -> str:
    pid = stack_pid(stack)
    name = tap_of_pid(pid)
    if name is None:  # the fast-path children hold it too
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                for child in f.read().split():
                    name = tap_of_pid(int(child))
                    if name:
                        break
        except OSError:
            pass
    if name is None:
        raise TraceError(f"cannot find the TAP of the stack (pid {pid}); pass --iface")
    return name


# -- pcap -----------------------------------------------------------------------------------------


class PcapWriter:
    """Classic pcap (v2.4, microseconds, Ethernet)."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.f.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        self.frames = 0
        self.bytes = 0

    def write(self, ts_ns: int, frame: bytes) -> None:
        sec, ns = divmod(ts_ns, 1_000_000_000)
        data = frame[:SNAPLEN]
        self.f.write(struct.pack("<IIII", sec, ns // 1000, len(data), len(frame)))
        self.f.write(data)
        self.frames += 1
        self.bytes += len(frame)

    def close(self) -> None:
        self.f.close()


# -- flow filter ----------------------------------------------------------------------------------


def _addr(s: str) -> tuple[bytes, int]:
    ip, port = s.rsplit(":", 1)
    return socket.inet_aton(ip), int(port)


def flow_matcher(flow: dict):
    """A predicate on Ethernet frames: IPv4/TCP of this flow, either direction."""
    lip, lport = _addr(flow["local"])
    rip, rport = _addr(flow["remote"])
    a = (lip, rip, lport, rport)
    b = (rip, lip, rport, lport)

    def match(frame: bytes) -> bool:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            return False
        ihl = (frame[14] & 0x0F) * 4
        if len(frame) < 14 + ihl + 4:
            return False
        sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
        t = (frame[26:30], frame[30:34], sport, dport)
        return t == a or t == b

    return match


# -- sampler --------------------------------------------------------------------------------------


class FlowSampler(threading.Thread):
    """Samples the flow list every interval into a CSV (own control connection)."""

    def __init__(self, state_dir: str | None, path: str, interval: float, flow_id: int | None) -> None:
        super().__init__(name="tas-trace-sampler", daemon=True)
        from libtas.api import Stack

        self.stack = Stack(state_dir)
        self.f = open(path, "w", newline="")  # noqa: SIM115 - closed in run()
        self.w = csv.DictWriter(self.f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        self.w.writeheader()
        self.interval = interval
        self.flow_id = flow_id
        self.stop = threading.Event()
        self.rows = 0
        self.t0 = time.monotonic()
        self.error: str | None = None

    def run(self) -> None:
        try:
            nxt = time.monotonic()
            while not self.stop.is_set():
                now = time.monotonic()
                try:
                    flows = self.stack.flows()
                except OSError as e:
                    self.error = str(e)
                    return
                for fl in flows:
                    if self.flow_id is not None and fl["flow"] != self.flow_id:
                        continue
                    if "cwnd" not in fl:
                        continue  # not installed yet
                    self.w.writerow({"t_s": f"{now - self.t0:.4f}", **fl})
                    self.rows += 1
                nxt += self.interval
                self.stop.wait(max(0.0, nxt - time.monotonic()))
        finally:
            self.f.close()
            self.stack.close()


# -- main -----------------------------------------------------------------------------------------


def run(
    state_dir: str | None,
    out: str,
    *,
    flow_id: int | None = None,
    duration: float | None = None,
    csv_path: str | None = None,
    interval_ms: float = 10.0,
    iface: str | None = None,
    max_frames: int | None = None,
    ready_out=sys.stdout,
) -> int:
    from libtas.api import Stack

    try:
        stack = Stack(state_dir)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"tas trace: {e}", file=sys.stderr)
        return 2
    try:
        match = None
        if flow_id is not None:
            flows = {f["flow"]: f for f in stack.flows()}
            if flow_id not in flows:
                print(f"tas trace: no flow {flow_id} (see tas flows)", file=sys.stderr)
                return 2
            match = flow_matcher(flows[flow_id])
        try:
            iface = iface or find_tap(stack)
        except TraceError as e:
            print(f"tas trace: {e}", file=sys.stderr)
            return 2
    finally:
        stack.close()

    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((iface, 0))
    except OSError as e:
        print(
            f"tas trace: cannot capture on {iface}: {e.strerror or e} (run it in the stack's network "
            "namespace, as root)",
            file=sys.stderr,
        )
        return 2
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    writer = PcapWriter(out)
    csv_path = csv_path or os.path.splitext(out)[0] + ".csv"
    sampler = FlowSampler(state_dir, csv_path, interval_ms / 1000.0, flow_id)
    stopping = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    sampler.start()
    deadline = None if duration is None else time.monotonic() + duration
    what = f"flow {flow_id}" if flow_id is not None else "all frames"
    print(f"tas trace: capturing {what} on {iface} -> {out} (CSV {csv_path})", file=ready_out, flush=True)
    try:
        while not stopping.is_set():
            if max_frames is not None and writer.frames >= max_frames:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            r, _, _ = select.select([sock], [], [], 0.2 if left is None else min(0.2, left))
            if not r:
                continue
            for _ in range(256):  # drain what is queued
                try:
                    frame = sock.recv(SNAPLEN, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                if match is None or match(frame):
                    writer.write(time.time_ns(), frame)
    finally:
        sampler.stop.set()
        sampler.join(5)
        writer.close()
        sock.close()
        for sig, h in old.items():
            signal.signal(sig, h)
    print(
        f"tas trace: {writer.frames} frames ({writer.bytes} bytes) in {out}; {sampler.rows} samples in "
        f"{csv_path}",
        file=ready_out,
        flush=True,
    )
    if sampler.error:
        print(f"tas trace: flow sampling stopped: {sampler.error}", file=sys.stderr)
    return 0
