"""Topology plumbing: namespaces, bridge, TAP, nftables loss (needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from nicemu.topology import MAX_PREFIX, Topology, cleanup_stale, list_namespaces

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

ECHO_PORT = 7007
UDP_PORT = 7008


def py_in(topo: Topology, ns: str, code: str, **kw) -> subprocess.Popen:
    return topo.run_in(
        ns,
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_ok(p: subprocess.Popen, timeout: float = 20) -> str:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"timed out: {out} {err}") from None
    assert p.returncode == 0, err
    return out


def tcp_echo(topo: Topology) -> str:
    srv = py_in(
        topo,
        topo.stack_ns,
        f"""
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("{topo.linux_ip}", {ECHO_PORT})); s.listen(1); s.settimeout(10)
        print("ready", flush=True)
        c, _ = s.accept(); c.settimeout(10)
        c.sendall(c.recv(100).upper()); c.close()
        """,
    )
    try:
        assert srv.stdout.readline().strip() == "ready"
        cli = py_in(
            topo,
            topo.peer_ns,
            f"""
            import socket
            c = socket.create_connection(("{topo.linux_ip}", {ECHO_PORT}), timeout=10)
            c.sendall(b"hello tas"); print(c.recv(100).decode())
            """,
        )
        out = wait_ok(cli)
        wait_ok(srv)
        return out.strip()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def udp_count(topo: Topology, n: int) -> int:
    """Send n datagrams peer -> linux_ip; return how many arrived."""
    rcv = py_in(
        topo,
        topo.stack_ns,
        f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("{topo.linux_ip}", {UDP_PORT})); s.settimeout(1.0)
        print("ready", flush=True)
        got = set()
        for _ in range({n}):
            try:
                d = s.recv(2048)
            except TimeoutError:
                break
            got.add(d)
        print(len(got))
        """,
    )
    try:
        assert rcv.stdout.readline().strip() == "ready"
        snd = py_in(
            topo,
            topo.peer_ns,
            f"""
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range({n}):
                s.sendto(b"%06d" % i, ("{topo.linux_ip}", {UDP_PORT}))
                time.sleep(0.0005)
            """,
        )
        wait_ok(snd)
        return int(wait_ok(rcv).split()[-1])
    finally:
        if rcv.poll() is None:
            rcv.kill()
            rcv.wait()


def test_names_fit_ifnamsiz():
    t = Topology("x" * MAX_PREFIX, link="emu")
    for name in (t.peer_veth, t.stack_veth, t.bridge, t.tap, t.emu_veth, t.emu_veth_br):
        assert len(name) <= 15
    with pytest.raises(ValueError):
        Topology("x" * (MAX_PREFIX + 1))


@pytest.mark.parametrize("link", ["bridge", "emu"])
def test_up_down_leaves_nothing(link):
    topo = Topology(link=link)
    with topo:
        names = set(list_namespaces())
        assert {topo.peer_ns, topo.stack_ns} <= names
        st = topo.status()["namespaces"]
        assert topo.tap in st[topo.stack_ns]["links"]
        assert f"{topo.peer_ip}/24" in st[topo.peer_ns]["ipv4"]
        # The kernel of the stack namespace has no IPv4 on the wire.
        assert st[topo.stack_ns]["ipv4"] == ["127.0.0.1/8"]
    assert not [n for n in list_namespaces() if n.startswith(topo.prefix)]
    topo.down()  # idempotent


def test_down_on_exception():
    topo = Topology()
    with pytest.raises(RuntimeError), topo:
        raise RuntimeError("boom")
    assert not [n for n in list_namespaces() if n.startswith(topo.prefix)]


def test_cleanup_stale():
    topo = Topology().up()
    try:
        assert sorted(cleanup_stale(topo.prefix)) == sorted(topo.namespaces)
        assert not [n for n in list_namespaces() if n.startswith(topo.prefix)]
    finally:
        topo.down()
    with pytest.raises(ValueError):
        cleanup_stale("")


def test_enter_namespace():
    import socket

    with Topology() as topo:
        with topo.enter(topo.peer_ns):
            names = [n for _, n in socket.if_nameindex()]
        assert topo.peer_veth in names
        assert topo.peer_veth not in [n for _, n in socket.if_nameindex()]


def test_linux_peer_reaches_linux_server():
    with Topology(linux_server=True) as topo:
        assert tcp_echo(topo) == "HELLO TAS"


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables not installed")
def test_add_loss_drops():
    n = 400
    with Topology(linux_server=True) as topo:
        assert tcp_echo(topo) == "HELLO TAS"  # resolves ARP before the loss
        assert udp_count(topo, 50) == 50
        topo.add_loss(50)
        got = udp_count(topo, n)
        assert 0.3 * n < got < 0.7 * n, got
        topo.clear_loss()
        time.sleep(0.1)
        assert udp_count(topo, 50) == 50
