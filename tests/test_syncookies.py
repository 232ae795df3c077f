"""SYN cookies (RFC 4987, issue 4): a flood of 20,000 SYNs from spoofed
198.18.0.x addresses fills the listener's SYN queue (half-open entries,
bounded by the backlog); from then on the slow path answers SYNs statelessly
with a cookie in its ISN and opens the connection when a valid cookie comes
back in an ACK.  A legitimate Linux client connecting during the flood
still connects and transfers 4 MiB byte-exactly.

The spoofed sources are addresses no one owns inside the test topology (the
stack answers to the SYN's source MAC, so the SYN-ACKs reach the peer
namespace's kernel, which drops them: not its addresses).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest
from rawtcp import RST, SYN, RawFlow, RawPort, raw_frames_reach_stack, stack_mac, syn_frame
from test_faults_util import check_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)"),
]

N_SYNS = int(os.environ.get("TAS_SYNFLOOD", "20000"))
REPO = Path(__file__).resolve().parent.parent

# The receiver keeps its listener open (unlike tests/apps/tas_app.py, which
# closes it after the first accept) until told to go, so SYNs sent after the
# legitimate connection still meet a full SYN queue.
RECEIVER = """
import sys, hashlib, json
sys.path.insert(0, {repo!r})
from libtas.api import Stack
st = Stack({state!r}); ctx = st.context()
lst = ctx.listen({port}, backlog=128)
print("listening", flush=True)
c = lst.accept(timeout=60)
h, n, buf = hashlib.sha256(), 0, bytearray(1 << 18)
while True:
    k = c.recv_into(buf, timeout=60)
    if not k:
        break
    h.update(memoryview(buf)[:k]); n += k
c.close()
print("RESULT " + json.dumps({{"ok": True, "rx_bytes": n, "rx_sha256": h.hexdigest()}}), flush=True)
import time; time.sleep(120)
lst.close(); ctx.close(); st.close()
"""


def test_syn_flood_legit_client_still_connects(tas):
    port = 7410
    topo = tas.topo
    code = RECEIVER.format(repo=str(REPO), state=str(tas.state_dir), port=port)
    app = tas.spawn(topo.stack_ns, "flood-rx", [sys.executable, "-c", code])
    app.wait_line("listening", 15)
    before = tas.stats()
    rng = random.Random(4987)
    with raw_frames_reach_stack(topo), RawPort(topo, stack_mac(tas.log())) as rp:
        frames = [
            syn_frame(
                rp.mac,
                rp.stack_mac_b,
                f"198.18.0.{rng.randrange(10, 250)}",
                topo.stack_ip,
                rng.randrange(1024, 65535),
                port,
                rng.randrange(1 << 32),
            )
            for _ in range(N_SYNS)
        ]
        sent = {"n": 0}

        def flood() -> None:  # ~5 s, so the legitimate client connects in the middle of it
            t0 = time.monotonic()
            for i, f in enumerate(frames):
                rp.send(f)
                sent["n"] += 1
                if i % 100 == 99:
                    lag = t0 + (i + 1) / 4000 - time.monotonic()
                    if lag > 0:
                        time.sleep(lag)

        t = threading.Thread(target=flood, name="synflood")
        t0 = time.monotonic()
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and sent["n"] > 1000
        cli = tas.peer(
            "client",
            topo.stack_ip,
            port,
            name="legit",
            script="send,close",
            send_bytes=4 << 20,
            seed=4987,
            timeout=60,
        )
        cres = cli.result(70)
        during = t.is_alive()
        t.join(30)
        flood_s = time.monotonic() - t0
        res = json.loads(app.wait_line("RESULT", 30)[len("RESULT ") :])
        check_transfer(cres, res, 4 << 20, 4987)
        # a forged cookie (an ACK nobody got a SYN-ACK for) opens nothing: RST
        forged = RawFlow(rp, "198.18.0.251", 4242, topo.stack_ip, port, isn=777)
        m = rp.mark()
        forged.send(seq=778, ack=0x12345678, flags="A")
        rst = rp.wait(lambda r: forged.from_stack(r) and r.flags & RST, m, 3.0)
        assert rst is not None and rst.seq == 0x12345678, "a forged cookie was not answered with RST"
        time.sleep(0.5)
        synacks = rp.find(
            lambda r: getattr(r, "flags", 0) & SYN and r.sport == port and r.src == topo.stack_ip
        )
    after = tas.stats()
    tas.stop_apps([app])
    sp0, sp = before["slowpath"], after["slowpath"]
    cookies = sp["syncookies_sent"] - sp0["syncookies_sent"]
    valid = sp["syncookies_validated"] - sp0["syncookies_validated"]
    krx_full = sum(c["krx_full"] for c in after["cores"]) - sum(c["krx_full"] for c in before["cores"])
    print(
        f"\nSYN flood: {sent['n']} SYNs in {flood_s:.1f} s (client done during the flood: {during}); "
        f"SYN-ACKs seen {len(synacks)}, cookies sent {cookies}, validated {valid}, "
        f"dropped as backlog {sp['syn_dropped_backlog'] - sp0['syn_dropped_backlog']}, "
        f"SYNs lost to a full slow-path queue {krx_full}; syn_rcvd {sp['syn_rcvd'] - sp0['syn_rcvd']}, "
        f"fast path rx frames {after['segments_in'] - before['segments_in']}; legit transfer {cres.get('elapsed')} s"
    )
    print(
        {k: sp[k] - sp0.get(k, 0) for k in sp if sp[k] != sp0.get(k, 0)},
        {
            k: sum(c[k] for c in after["cores"]) - sum(c[k] for c in before["cores"])
            for k in ("rx_frames", "to_slowpath", "krx_full", "tx_frames")
        },
        after["drops"],
    )
    assert sent["n"] == N_SYNS
    # every SYN is accounted for: queued, answered with a cookie, or lost to a
    # full slow-path queue (a loaded machine); most get cookies
    syn_rcvd = sp["syn_rcvd"] - sp0["syn_rcvd"]
    assert syn_rcvd + krx_full >= N_SYNS * 0.95
    assert cookies >= min(1000, N_SYNS // 2), "the SYN queue filled up, yet few SYNs got a cookie"
    assert valid >= 1, "the legitimate client did not come in through a cookie"
    assert sp["syncookies_failed"] == sp0["syncookies_failed"] + 1  # the forged one
    assert after["half_open"] <= 128 + before["half_open"]
