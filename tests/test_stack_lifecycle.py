"""`tas start` as a user runs it: errors, ready line, clean stop, TAP
ownership, gratuitous ARP, two stacks side by side, stats."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from kernel_slowpath import stack as stackmod
from nicemu.topology import Topology
from tests.stackproc import StackProcess

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and TAP devices")
pytestmark = [pytest.mark.interop, root_only]


def run_tas(*args: str, ns: str | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + ["tas", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def topo():
    t = Topology(linux_server=True)
    t.up()
    try:
        yield t
    finally:
        t.down()


def peer_python(topo: Topology, code: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", topo.peer_ns, sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout)


def start_echo(sp: StackProcess, port: int = 7) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", sp.ns, "tas", "echo-server", "--port", str(port),
                          "--state-dir", sp.state_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    assert "listening" in line, line
    return p


def stop_proc(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- errors ---------------------------------------------------------------

@pytest.mark.parametrize("ip,msg", [("300.1.1.1/24", "bad address"), ("198.18.0.2", "prefix length is required"),
                                    ("198.18.0.0/24", "network or broadcast")])
def test_bad_address_is_one_clear_line(ip, msg):
    r = run_tas("start", "--tap", "nosuchtap0", "--ip", ip, "--state-dir", tempfile.mkdtemp())
    assert r.returncode == 2
    assert msg in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_not_root_is_refused(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(stackmod.StartError, match="must run as root"):
        stackmod.check_environment()


def test_missing_dev_net_tun():
    state = tempfile.mkdtemp()
    r = subprocess.run(["unshare", "--mount", "--net", "sh", "-c",
                        f"mount -t tmpfs none /dev/net && exec tas start --tap t0 --ip 198.18.0.2/24 "
                        f"--state-dir {state}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "/dev/net/tun" in r.stderr


def test_stats_without_stack_fails_clearly():
    r = run_tas("stats", "--state-dir", tempfile.mkdtemp())
    assert r.returncode == 2
    assert "no TAS stack running" in r.stderr


# -- lifecycle --------------------------------------------------------------

def test_start_ready_stop_resets_flows_and_cleans_up(topo):
    from scapy.all import ARP, AsyncSniffer  # noqa: F401 (scapy's layers)

    sniffer_code = f"""
        from scapy.all import AsyncSniffer, ARP
        import sys, time
        s = AsyncSniffer(iface={topo.peer_veth!r}, filter="arp", store=True)
        s.start(); print("sniffing", flush=True)
        time.sleep(6); s.stop()
        print(sum(1 for p in s.results if ARP in p and p[ARP].psrc == p[ARP].pdst == "198.18.0.2"))
    """
    sniff = subprocess.Popen(["ip", "netns", "exec", topo.peer_ns, sys.executable, "-c",
                              textwrap.dedent(sniffer_code)], stdout=subprocess.PIPE, text=True)
    assert sniff.stdout.readline().strip() == "sniffing"
    time.sleep(1.0)
    sp = StackProcess(topo.stack_ns, topo.tap).start()
    echo = None
    try:
        assert re.search(r"mac (02(:[0-9a-f]{2}){5})", sp.ready_line)
        fp_pids = [int(x) for x in re.findall(r"fast path core \d+: pid (\d+)", sp.log())]
        assert len(fp_pids) == 1
        echo = start_echo(sp)
        # a Linux client with an open connection: stopping the stack resets it
        client = subprocess.Popen(["ip", "netns", "exec", topo.peer_ns, sys.executable, "-c", textwrap.dedent("""
            import socket, sys
            s = socket.create_connection(("198.18.0.2", 7), timeout=10)
            s.sendall(b"ping"); assert s.recv(4) == b"ping"
            print("connected", flush=True)
            try:
                data = s.recv(10)
                print("eof" if data == b"" else "data")
            except ConnectionResetError:
                print("reset")
            """)], stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "connected"
        stats = json.loads(sp.tas("stats", "--json").stdout)
        assert stats["flows_open"] == 1
        assert stats["cores"][0]["rx_frames"] > 0
        stop_proc(echo)
        echo = None
        # the echo server exited: its flows are reset by the stack
        assert client.wait(10) == 0
        assert client.stdout.read().strip() == "reset"
        rc = sp.stop()
        assert rc == 0, sp.log()
    finally:
        if echo:
            stop_proc(echo)
        sp.stop()
    out, _ = sniff.communicate(timeout=15)
    assert int(out.strip().splitlines()[-1]) >= 1, "no gratuitous ARP seen"
    for pid in fp_pids:
        assert not os.path.exists(f"/proc/{pid}"), "fast-path process survived the stack"
    # the TAP existed before (the topology made it): reused and left in place
    r = subprocess.run(["ip", "netns", "exec", topo.stack_ns, "ip", "link", "show", topo.tap], capture_output=True)
    assert r.returncode == 0
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("tas")]
    assert not os.path.exists(os.path.join(sp.state_dir, "control.sock"))


def test_sigterm_with_open_flow_sends_rst(topo):
    sp = StackProcess(topo.stack_ns, topo.tap).start()
    echo = start_echo(sp)
    try:
        client = subprocess.Popen(["ip", "netns", "exec", topo.peer_ns, sys.executable, "-c", textwrap.dedent("""
            import socket
            s = socket.create_connection(("198.18.0.2", 7), timeout=10)
            s.sendall(b"x"); assert s.recv(1) == b"x"
            print("connected", flush=True)
            try:
                print("eof" if s.recv(10) == b"" else "data")
            except ConnectionResetError:
                print("reset")
            """)], stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "connected"
        assert sp.stop(signal.SIGINT) == 0, sp.log()
        assert client.wait(10) == 0
        assert client.stdout.read().strip() == "reset"
    finally:
        stop_proc(echo)
        sp.stop()


def test_state_dir_in_use_and_created_tap_removed(topo):
    sp = StackProcess(topo.stack_ns, topo.tap).start()
    try:
        other = StackProcess(topo.stack_ns, "x" + topo.tap[:10], state_dir=sp.state_dir)
        r = subprocess.run(other.argv(), capture_output=True, text=True, timeout=20)
        assert r.returncode == 2
        assert "in use by a live stack" in r.stderr and str(sp.proc.pid) not in ("",)
    finally:
        assert sp.stop() == 0
    # a TAP that did not exist is created, and removed on stop
    newtap = topo.prefix + "nt"
    sp2 = StackProcess(topo.stack_ns, newtap, ip="198.18.1.2/24").start()
    try:
        r = subprocess.run(["ip", "netns", "exec", topo.stack_ns, "ip", "link", "show", newtap], capture_output=True)
        assert r.returncode == 0
    finally:
        assert sp2.stop() == 0
    r = subprocess.run(["ip", "netns", "exec", topo.stack_ns, "ip", "link", "show", newtap], capture_output=True)
    assert r.returncode != 0, "created TAP was left behind"


def test_default_mac_is_stable():
    a = stackmod.parse_config("tap9", "198.18.0.2/24", None, None, 1, "/tmp/x")
    b = stackmod.parse_config("tap9", "198.18.0.2/24", None, None, 1, "/tmp/y")
    c = stackmod.parse_config("tap9", "198.18.0.5/24", None, None, 1, "/tmp/y")
    assert a.mac == b.mac != c.mac
    assert a.mac[0] & 0x02 and not a.mac[0] & 0x01


def test_two_stacks_side_by_side(topo):
    tap2 = topo.prefix + "t2"
    ns = topo.stack_ns
    subprocess.run(["ip", "netns", "exec", ns, "ip", "tuntap", "add", "dev", tap2, "mode", "tap"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", tap2, "master", topo.bridge, "up"], check=True)
    a = StackProcess(ns, topo.tap).start()
    b = StackProcess(ns, tap2, ip="198.18.0.4/24").start()
    echoes = []
    try:
        echoes = [start_echo(a), start_echo(b)]
        r = peer_python(topo, """
            import socket
            for ip in ("198.18.0.2", "198.18.0.4"):
                s = socket.create_connection((ip, 7), timeout=10)
                msg = ip.encode() * 100
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += s.recv(65536)
                assert got == msg, ip
                s.close()
            print("ok")
            """)
        assert r.stdout.strip() == "ok", r.stderr
    finally:
        for e in echoes:
            stop_proc(e)
        assert b.stop() == 0
        assert a.stop() == 0


def test_two_fast_path_cores(topo):
    """--fp-cores 2: one TAP queue and one pinned process per core; flows
    spread over both queues and every byte comes back intact."""
    sp = StackProcess(topo.stack_ns, topo.tap, extra=["--fp-cores", "2"]).start()
    echo = None
    try:
        assert len(re.findall(r"fast path core \d+: pid (\d+)", sp.log())) == 2
        echo = start_echo(sp)
        r = peer_python(topo, """
            import hashlib, os, socket, threading
            errors = []
            def one(i):
                try:
                    data = os.urandom(256 << 10)
                    s = socket.create_connection(("198.18.0.2", 7), timeout=20)
                    got = bytearray()
                    def rd():
                        while len(got) < len(data):
                            b = s.recv(65536)
                            if not b:
                                break
                            got.extend(b)
                    t = threading.Thread(target=rd); t.start()
                    s.sendall(data); t.join(30)
                    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), i
                    s.close()
                except Exception as e:
                    errors.append(repr(e))
            ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
            [t.start() for t in ts]; [t.join(60) for t in ts]
            print("ok" if not errors else errors)
            """, timeout=90)
        assert r.stdout.strip() == "ok", (r.stdout, r.stderr, sp.log())
        st = json.loads(sp.tas("stats", "--json").stdout)
        assert len(st["cores"]) == 2
        assert all(c["rx_frames"] > 0 for c in st["cores"]), st["cores"]
    finally:
        if echo:
            stop_proc(echo)
        assert sp.stop() == 0, sp.log()
