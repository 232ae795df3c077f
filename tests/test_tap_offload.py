"""TAP offloads (TAS_TAP_OFFLOAD=1: IFF_VNET_HDR, TSO4 super-segments on
writes): a Linux client echoes 16 MiB of random bytes through the native echo
server byte-exact, and the fast path really sent large frames (needs root)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from nicemu.topology import Topology
from tests.stackproc import StackProcess

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and a TAP device"),
]

CLIENT = textwrap.dedent(
    """
    import hashlib, random, socket, sys, threading
    n = int(sys.argv[1])
    data = random.Random(5).randbytes(n)
    s = socket.create_connection(("198.18.0.2", 7), timeout=20)
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    h, got = hashlib.sha256(), 0
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        h.update(b)
        got += len(b)
    t.join()
    print(got, h.hexdigest() == hashlib.sha256(data).hexdigest())
    """
)


def test_echo_16mib_with_tso(monkeypatch):
    monkeypatch.setenv("TAS_TAP_OFFLOAD", "1")
    monkeypatch.delenv("TAS_PURE", raising=False)
    with Topology() as topo:
        stack = StackProcess(topo.stack_ns, topo.tap).start()
        echo = None
        try:
            echo = subprocess.Popen(
                ["ip", "netns", "exec", topo.stack_ns, "tas", "echo-server", "--port", "7",
                 "--state-dir", stack.state_dir],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            assert "listening" in echo.stdout.readline()
            n = 16 << 20
            r = subprocess.run(
                ["ip", "netns", "exec", topo.peer_ns, sys.executable, "-c", CLIENT, str(n)],
                capture_output=True, text=True, timeout=90,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert r.stdout.split() == [str(n), "True"]
            st = stack.tas("stats", "--json")
            assert st.returncode == 0, st.stderr
            import json

            fp = json.loads(st.stdout)
            text = json.dumps(fp)
            # at least n bytes went out in far fewer frames than 1.5 KiB ones
            tx_bytes = _find(fp, "tx_bytes")
            tx_frames = _find(fp, "tx_frames")
            assert tx_bytes >= n, text[:2000]
            assert tx_bytes / tx_frames > 3000, (tx_bytes, tx_frames)
        finally:
            if echo is not None:
                echo.terminate()
                echo.wait(10)
            assert stack.stop() == 0, stack.log()


def _find(doc, key: str) -> int:
    """Sum of every `key` in a nested stats document."""
    if isinstance(doc, dict):
        return sum((v if k == key and isinstance(v, int) else _find(v, key)) for k, v in doc.items())
    if isinstance(doc, list):
        return sum(_find(v, key) for v in doc)
    return 0
