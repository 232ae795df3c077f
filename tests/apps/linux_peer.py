"""The Linux side of the interop tests (run it in the peer namespace).

Subcommands (each prints a final ``RESULT {json}`` line; exit 0 iff ok):

``client IP PORT``   connect, run a step script (see steps.py)
``server IP PORT``   listen (prints ``listening PORT``), accept one, run a script
``echo IP PORT``     ``--conns`` concurrent connections through an echo server,
                     each sends ``--bytes`` distinct bytes and must read
                     exactly them back
``refused IP PORT``  connect must fail with ConnectionRefusedError
``synprobe IP PORT`` scapy: send a bare SYN, report the answer's flags/ack
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from steps import Runner, emit, fail, pattern_chunks, say  # noqa: E402


class SockConn:
    """steps.Runner adapter for a Linux TCP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv_into(self, mv, timeout: float) -> int:
        self.sock.settimeout(timeout)
        return self.sock.recv_into(mv)

    def send(self, mv, timeout: float) -> int:
        self.sock.settimeout(timeout)
        return self.sock.send(mv)

    def shut_wr(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def run_script(sock: socket.socket, a, deadline: float, **extra) -> int:
    runner = Runner(SockConn(sock), a.send_bytes, a.seed, deadline)
    ok = runner.run(a.script)
    emit(runner.result(**extra))
    if sock.fileno() >= 0:
        sock.close()
    return 0 if ok else 1


def cmd_client(a, deadline: float) -> int:
    t0 = time.monotonic()
    sock = socket.socket()
    if a.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    sock.settimeout(max(0.01, deadline - t0))
    try:
        sock.connect((a.ip, a.port))
    except OSError as e:
        fail(f"connect: {type(e).__name__}: {e}", elapsed=round(time.monotonic() - t0, 3))
    say(f"connected {sock.getsockname()[1]}")
    return run_script(sock, a, deadline, local_port=sock.getsockname()[1])


def cmd_server(a, deadline: float) -> int:
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((a.ip, a.port))
    lst.listen(8)
    say(f"listening {lst.getsockname()[1]}")
    lst.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        sock, peer = lst.accept()
    except TimeoutError:
        fail("no connection before the deadline")
    lst.close()
    say(f"accepted {peer[0]}:{peer[1]}")
    return run_script(sock, a, deadline, remote_port=peer[1])


def cmd_refused(a, deadline: float) -> int:
    t0 = time.monotonic()
    try:
        s = socket.create_connection((a.ip, a.port), timeout=max(0.01, deadline - t0))
    except ConnectionRefusedError:
        emit({"ok": True, "error": None, "refused": True, "elapsed": round(time.monotonic() - t0, 3)})
        return 0
    except OSError as e:
        fail(f"{type(e).__name__}: {e}", elapsed=round(time.monotonic() - t0, 3))
    s.close()
    fail("connected, expected ConnectionRefusedError")
    return 1


class EchoConn:
    def __init__(self, idx: int, sock: socket.socket, data: bytes) -> None:
        self.idx = idx
        self.sock = sock
        self.data = data
        self.sent = 0
        self.got = bytearray()
        self.eof = False


def cmd_echo(a, deadline: float) -> int:
    """N connections at once, each writing its own data and reading it back
    (interleaved, non-blocking, so neither side's buffers can deadlock)."""
    t0 = time.monotonic()
    sel = selectors.DefaultSelector()
    conns: list[EchoConn] = []
    try:
        for i in range(a.conns):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((a.ip, a.port))
            if err not in (0, errno.EINPROGRESS):
                fail(f"connect #{i}: {os.strerror(err)}")
            data = b"".join(pattern_chunks(a.bytes, a.seed + i))
            c = EchoConn(i, s, data)
            conns.append(c)
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        open_ = len(conns)
        while open_:
            left = deadline - time.monotonic()
            if left <= 0:
                stuck = [(c.idx, c.sent, len(c.got)) for c in conns if not c.eof][:10]
                fail(f"timed out with {open_} connections open; (idx, sent, received): {stuck}")
            for key, ev in sel.select(min(left, 1.0)):
                c: EchoConn = key.data
                if ev & selectors.EVENT_WRITE and c.sent < len(c.data):
                    try:
                        c.sent += c.sock.send(c.data[c.sent : c.sent + 65536])
                    except BlockingIOError:
                        pass
                    except OSError as e:
                        fail(f"conn #{c.idx} send: {type(e).__name__}: {e}")
                    if c.sent == len(c.data):
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                if ev & selectors.EVENT_READ:
                    try:
                        chunk = c.sock.recv(262144)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        fail(f"conn #{c.idx} recv after {len(c.got)} bytes: {type(e).__name__}: {e}")
                    if not chunk:
                        fail(f"conn #{c.idx}: EOF after {len(c.got)} of {len(c.data)} bytes")
                    c.got += chunk
                    if len(c.got) >= len(c.data):
                        sel.unregister(c.sock)
                        c.eof = True
                        open_ -= 1
        bad = [c.idx for c in conns if bytes(c.got) != c.data]
        # close gracefully: the echo server sees EOF and closes its side
        for c in conns:
            c.sock.setblocking(True)
            c.sock.shutdown(socket.SHUT_WR)
        eofs = 0
        for c in conns:
            c.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if c.sock.recv(1) == b"":
                    eofs += 1
            except OSError:
                pass
        emit(
            {
                "ok": not bad and eofs == len(conns),
                "error": (f"mismatch on {bad[:10]}" if bad else None)
                or (None if eofs == len(conns) else f"only {eofs} EOFs after SHUT_WR"),
                "conns": len(conns),
                "bytes_per_conn": a.bytes,
                "mismatched": bad,
                "eofs": eofs,
                "elapsed": round(time.monotonic() - t0, 3),
            }
        )
        return 0 if not bad and eofs == len(conns) else 1
    finally:
        for c in conns:
            c.sock.close()
        sel.close()


def cmd_synprobe(a, deadline: float) -> int:
    import random

    from scapy.all import IP, TCP, conf, sr1  # noqa: PLC0415

    conf.verb = 0
    seq = random.randrange(1 << 32)
    sport = random.randrange(40000, 60000)
    syn = IP(dst=a.ip) / TCP(sport=sport, dport=a.port, flags="S", seq=seq, window=8192)
    ans = None
    for _ in range(3):  # the first one may be spent on ARP
        ans = sr1(syn, timeout=min(2.0, max(0.01, deadline - time.monotonic())))
        if ans is not None or time.monotonic() > deadline:
            break
    if ans is None or TCP not in ans:
        fail("no TCP answer to the SYN", answer=None if ans is None else ans.summary())
    t = ans[TCP]
    emit(
        {
            "ok": True,
            "error": None,
            "syn_seq": seq,
            "sport": sport,
            "flags": str(t.flags),
            "flags_int": int(t.flags),
            "seq": t.seq,
            "ack": t.ack,
            "src": ans[IP].src,
            "ans_sport": t.sport,
            "ans_dport": t.dport,
            "summary": ans.summary(),
        }
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["client", "server", "echo", "refused", "synprobe"])
    ap.add_argument("ip")
    ap.add_argument("port", type=int)
    ap.add_argument("--script", default="")
    ap.add_argument("--send-bytes", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=65536)
    ap.add_argument("--rcvbuf", type=int, default=0, help="client: SO_RCVBUF before connecting")
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    return {
        "client": cmd_client,
        "server": cmd_server,
        "echo": cmd_echo,
        "refused": cmd_refused,
        "synprobe": cmd_synprobe,
    }[a.cmd](a, deadline)


if __name__ == "__main__":
    sys.exit(main())
