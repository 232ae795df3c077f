"""Pure-Python twin of flextcp/csrc/sp_flow.c (the slow path's operations
on shared flow records).  Same arguments, same results; tests compare the
two on random flow records.  Locking is the caller's business here: the
twin is used single-threaded (tests, TAS_PURE runs).  Functions that need
the RTO timer, the RTT estimator or the recovery state take the flow's side
record (``x``, a ``struct tas_flow_cc``) besides its record (``f``)."""

from __future__ import annotations

import struct

from flextcp.native import ffi, lib

U32 = 0xFFFFFFFF
U64 = (1 << 64) - 1
RTO_INIT_US = 1_000_000
RTO_MAX_US = 60_000_000
TCP_TLP_MIN_US = 10_000  # tcp_common.h
TCP_TLP_DELACK_US = 40_000
FF = {name: getattr(lib, name) for name in dir(lib) if name.startswith("TAS_FF_")}


def _backed_off_rto(x) -> int:
    rto = x.rto_us or RTO_INIT_US
    rto <<= min(x.rto_backoff, 12)
    return min(rto, RTO_MAX_US)


def scan_timeouts(flows, sides, n_flows: int, now_us: int, budget: int, cursor: int, max_out: int):
    """Returns (ids, reasons, new_cursor) like tas_sp_scan_timeouts
    (``sides[i]``: flow i's side record)."""
    ids: list[int] = []
    why: list[int] = []
    i = cursor % n_flows
    budget = min(budget, n_flows)
    k = 0
    while k < budget and len(ids) < max_out:
        f = flows[i]
        # as the C scan: a flow with nothing in flight and nothing to send
        # has no timer to fire (looked at without its lock there)
        if f.status == lib.TAS_FLOW_ACTIVE and (
            f.tx_max > f.tx_una or f.tx_head > f.tx_nxt
            or (f.flags & lib.TAS_FF_FIN_SENT and not f.flags & lib.TAS_FF_FIN_ACKED)
        ):
            x = sides[i]
            outstanding = f.tx_max > f.tx_una or (
                bool(f.flags & lib.TAS_FF_FIN_SENT) and not f.flags & lib.TAS_FF_FIN_ACKED
            )
            elapsed = (now_us - x.rto_start_us) & U32
            if elapsed > lib.TAS_SP_CLOCK_SKEW_MAX:
                elapsed = 0  # restarted by the fast path after our clock reading
            rto = _backed_off_rto(x)
            if elapsed >= rto:
                if outstanding and f.snd_wnd == 0 and f.tx_head > f.tx_una:
                    ids.append(i)
                    why.append(lib.TAS_TMO_PROBE)
                elif outstanding:
                    ids.append(i)
                    why.append(lib.TAS_TMO_RTO)
                elif f.snd_wnd < f.mss and f.tx_head > f.tx_nxt:
                    ids.append(i)
                    why.append(lib.TAS_TMO_PROBE)
            elif outstanding and elapsed >= _tlp_timeout(f, x, rto):
                ids.append(i)
                why.append(lib.TAS_TMO_TLP)
        k += 1
        i = (i + 1) % n_flows
    return ids, why, i


def _tlp_timeout(f, x, rto: int) -> int:
    """tlp_timeout: 2 SRTT (+ delayed-ACK allowance for one segment), at
    least the scan resolution; U32 when no probe is due."""
    if (
        not x.srtt_us
        or x.rto_backoff
        or f.snd_wnd == 0
        or f.flags & (lib.TAS_FF_TLP_OUT | lib.TAS_FF_TLP_SEND)
    ):
        return U32
    pto = 2 * x.srtt_us
    if f.tx_max - f.tx_una <= f.mss:
        pto += TCP_TLP_DELACK_US
    pto = max(pto, TCP_TLP_MIN_US)
    return pto if pto < rto else U32


def tlp(f) -> int:
    """tas_sp_tlp: ask the fast path for a tail loss probe."""
    if f.status != lib.TAS_FLOW_ACTIVE:
        return -1
    f.flags |= lib.TAS_FF_TLP_SEND | lib.TAS_FF_TLP_OUT
    return 0


def rto_fire(f, x, now_us: int) -> int:
    if f.status != lib.TAS_FLOW_ACTIVE:
        return -1
    half = ((f.tx_max - f.tx_una) // 2) & U32
    x.ssthresh = max(half, 2 * f.mss)
    f.cwnd = f.mss
    f.tx_nxt = f.tx_una
    x.tx_recover = f.tx_max
    f.flags &= (
        ~(lib.TAS_FF_FIN_OUT | lib.TAS_FF_RECOVERY | lib.TAS_FF_REXMIT_HEAD | lib.TAS_FF_TLP_SEND) & U32
    )
    x.dupacks = 0
    if x.rto_backoff < 15:
        x.rto_backoff += 1
    x.rto_start_us = now_us & U32
    x.cnt_rexmit += 1
    return x.rto_backoff


def probe(f, x, now_us: int) -> int:
    if f.status != lib.TAS_FLOW_ACTIVE:
        return -1
    f.flags |= lib.TAS_FF_PROBE
    if f.snd_wnd == 0 and f.tx_nxt > f.tx_una:
        f.tx_nxt = f.tx_una
        f.flags &= ~lib.TAS_FF_FIN_OUT & U32
    if x.rto_backoff < 15:
        x.rto_backoff += 1
    x.rto_start_us = now_us & U32
    return x.rto_backoff


def set_mss(f, mss: int) -> int:
    if f.status == lib.TAS_FLOW_ACTIVE and lib.TAS_SP_MIN_MSS <= mss < f.mss:
        old = f.mss
        f.mss = mss
        f.tx_nxt = f.tx_una
        f.flags &= ~(lib.TAS_FF_FIN_OUT | lib.TAS_FF_REXMIT_HEAD) & U32
        return old
    return -1


def install(f, x, gen: int, flags: int, ctx_id: int, local_ip: int, remote_ip: int, local_port: int,
            remote_port: int, remote_mac: bytes, snd_wscale: int, rcv_wscale: int, mss: int, ts_recent: int,
            rx_off: int, rx_len: int, tx_off: int, tx_len: int, appflow_off: int, rx_seq0: int, tx_seq0: int,
            snd_wnd: int, wl1: int, wl2: int, rtt_us: int, now_us: int, core: int) -> int:
    """tas_sp_install: record ``f`` and side record ``x`` of a flow being
    installed, status left FREE."""
    ffi.memmove(f, bytes(ffi.sizeof("struct tas_flow")), ffi.sizeof("struct tas_flow"))
    ffi.memmove(x, bytes(ffi.sizeof("struct tas_flow_cc")), ffi.sizeof("struct tas_flow_cc"))
    f.gen, f.status, f.flags, f.ts_recent, f.ctx_id = gen, lib.TAS_FLOW_FREE, flags, ts_recent, ctx_id
    f.local_ip, f.remote_ip, f.local_port, f.remote_port = local_ip, remote_ip, local_port, remote_port
    f.remote_mac = list(remote_mac[:6])
    f.snd_wscale, f.rcv_wscale, f.mss = snd_wscale, rcv_wscale, mss
    x.core = core
    f.rx_off, f.rx_len, f.tx_off, f.tx_len, f.appflow_off = rx_off, rx_len, tx_off, tx_len, appflow_off
    f.rx_seq0, f.tx_seq0 = rx_seq0, tx_seq0
    x.rx_adv = rx_len
    f.snd_wnd = snd_wnd
    x.snd_wl1, x.snd_wl2 = wl1, wl2
    f.cwnd = (10 * mss) & U32  # RFC 6928
    x.ssthresh = 0x7FFFFFFF
    x.rto_us = 1_000_000
    if rtt_us:
        x.srtt_us, x.rttvar_us = rtt_us, rtt_us // 2
        x.rto_us = min(max(200_000, rtt_us + 4 * (rtt_us // 2)), U32)
    x.rto_start_us = now_us
    return 0


def activate(f, x, af, index, fid: int, gen: int, flags: int, ctx_id: int, local_ip: int, remote_ip: int,
             local_port: int, remote_port: int, remote_mac: bytes, snd_wscale: int, rcv_wscale: int, mss: int,
             ts_recent: int, rx_off: int, rx_len: int, tx_off: int, tx_len: int, appflow_off: int, rx_seq0: int,
             tx_seq0: int, snd_wnd: int, wl1: int, wl2: int, rtt_us: int, now_us: int, core: int, cc_mode: int,
             loss_beta: int) -> int:
    """tas_sp_activate: ``install``, the side record's CC mode and loss beta,
    the app's flow block ``af`` (a ``struct tas_appflow *``, or None), status
    ACTIVE, then ``index.insert(fid)`` (a flextcp.flowtab table over the same
    memory).  0, or -2 if the index refused the flow."""
    install(f, x, gen, flags, ctx_id, local_ip, remote_ip, local_port, remote_port, remote_mac, snd_wscale,
            rcv_wscale, mss, ts_recent, rx_off, rx_len, tx_off, tx_len, appflow_off, rx_seq0, tx_seq0, snd_wnd, wl1,
            wl2, rtt_us, now_us, core)
    x.mode = cc_mode & lib.TAS_CC_SP
    x.loss_beta = min(loss_beta, 1000)
    if af is not None:
        ffi.memmove(af, bytes(ffi.sizeof("struct tas_appflow")), ffi.sizeof("struct tas_appflow"))
        af.flow_id, af.gen = fid, gen
        af.rx_off, af.rx_len, af.tx_off, af.tx_len = rx_off, rx_len, tx_off, tx_len
    f.status = lib.TAS_FLOW_ACTIVE
    return 0 if index.insert(fid) == 0 else -2


def uninstall(f, index, fid: int) -> int:
    """tas_sp_uninstall: set_status(FREE, DETACHED), then
    ``index.remove(fid)`` (a flextcp.flowtab table over the same memory)."""
    set_status(f, lib.TAS_FLOW_FREE, lib.TAS_FF_DETACHED)
    return index.remove(fid)


def send_seg(ktx, s, dst_mac: bytes, dst_ip: int, sport: int, dport: int, seq: int, ack: int, flags: int,
             win: int, opts: int, mss: int, wscale: int, tsval: int, tsecr: int) -> int:
    """tas_sp_send_seg: ``ktx`` a flextcp.ring.Ring (producer), ``s`` the
    ``struct tas_seg *`` template."""
    from nicemu import wire

    ffi.memmove(s.dst_mac, dst_mac, 6)
    s.dst_ip, s.src_port, s.dst_port, s.seq, s.ack = dst_ip, sport, dport, seq, ack
    s.win, s.flags, s.opts = win, flags, opts
    if opts & lib.TAS_OPT_MSS:
        s.mss = mss
    if opts & lib.TAS_OPT_WS:
        s.wscale = wscale
    if opts & lib.TAS_OPT_TS:
        s.tsval, s.tsecr = tsval, tsecr
    seg = wire.Segment(src_mac=bytes(s.src_mac), dst_mac=bytes(s.dst_mac), sack_start=list(s.sack_start),
                       sack_end=list(s.sack_end), **{k: getattr(s, k) for k in wire._SEG_SCALARS})
    hdr = 32  # offsetof(struct tas_ktx, data)
    frame = wire.build_tcp(seg, b"", lib.TAS_KQ_ENTRY_SIZE - hdr)
    if not frame:
        return 0
    entry = bytearray(lib.TAS_KQ_ENTRY_SIZE)
    struct.pack_into("<HH", entry, 0, lib.TAS_KTX_FRAME, len(frame))
    entry[hdr : hdr + len(frame)] = frame
    return len(frame) if ktx.enqueue_n(bytes(entry), 1) == 1 else 0


def tx_close(f, tx_head: int) -> int:
    if f.status == lib.TAS_FLOW_ACTIVE and tx_head >= f.tx_head and tx_head - f.tx_una <= f.tx_len:
        if not f.flags & lib.TAS_FF_TX_FIN:
            f.tx_head = tx_head
        f.flags |= lib.TAS_FF_TX_FIN
        return 0
    return -1


def app_close(f, tx_head: int, rx_tail: int) -> tuple[int, int]:
    """tas_sp_close: (result, the record's flags before)."""
    flags = f.flags
    if f.rx_head > rx_tail and f.rx_head > f.rx_tail:
        return 1, flags
    if f.status == lib.TAS_FLOW_ACTIVE and tx_head >= f.tx_head and tx_head - f.tx_una <= f.tx_len:
        if not flags & lib.TAS_FF_TX_FIN:
            f.tx_head = tx_head
        f.flags = flags | lib.TAS_FF_TX_FIN | lib.TAS_FF_DETACHED
        return 0, flags
    return -1, flags


def set_status(f, status: int, set_flags: int) -> int:
    f.status = status
    f.flags |= set_flags
    return 0


# -- congestion control side table (issue 6, spflow.h) ---------------------
CC_FIELDS = ("acked", "ecn_bytes", "rexmit", "in_flight", "backlog", "loss", "undo", "max_flight", "srtt_us",
             "cwnd", "snd_wnd", "mss", "flags", "status")  # fmt: skip
# side-record fields tas_sp_cc_init keeps (the slow path sets them at install)
INSTALL_FIELDS = ("ssthresh", "srtt_us", "rttvar_us", "rto_us", "rto_start_us", "snd_wl1", "snd_wl2", "rx_adv",
                  "core")  # fmt: skip


def cc_init(cc, mode: int, loss_beta: int) -> int:
    """tas_sp_cc_init on one entry (cc: struct tas_flow_cc); keeps what the
    slow path wrote there at install (INSTALL_FIELDS)."""
    keep = {k: getattr(cc, k) for k in INSTALL_FIELDS}
    ffi.memmove(ffi.addressof(cc), b"\0" * ffi.sizeof("struct tas_flow_cc"), ffi.sizeof("struct tas_flow_cc"))
    for k, v in keep.items():
        setattr(cc, k, v)
    cc.mode = mode & lib.TAS_CC_SP
    cc.loss_beta = min(loss_beta, 1000)
    return 0


def cc_set_mode(cc, mode: int, loss_beta: int) -> int:
    """tas_sp_cc_set_mode on one entry."""
    cc.mode = (cc.mode & ~lib.TAS_CC_SP & U32) | (mode & lib.TAS_CC_SP)
    cc.loss_beta = min(loss_beta, 1000)
    if not mode & lib.TAS_CC_SP:
        cc.pace_rate = 0
    return 0


def cc_read(f, cc) -> dict:
    """tas_sp_cc_read for one flow: the sample as a dict (resets max_flight)."""
    if f is None or cc is None:
        return dict.fromkeys(CC_FIELDS, 0) | {"status": lib.TAS_FLOW_FREE}
    in_flight = (f.tx_nxt - f.tx_una) & U64
    out = {
        "acked": cc.cnt_acked, "ecn_bytes": cc.cnt_ecn_bytes, "rexmit": cc.cnt_rexmit, "in_flight": in_flight,
        "backlog": (f.tx_head - f.tx_nxt) & U64, "loss": cc.cnt_loss, "undo": cc.cnt_undo,
        "max_flight": cc.max_flight,
        "srtt_us": cc.srtt_us, "cwnd": f.cwnd, "snd_wnd": f.snd_wnd, "mss": f.mss, "flags": f.flags,
        "status": f.status,
    }  # fmt: skip
    cc.max_flight = min(in_flight, U32)
    return out


def cc_write(f, cc, cwnd: int, rate: int, loss_seen: int) -> int:
    """tas_sp_cc_write for one flow: 1 if written."""
    if cc is None or f is None:
        return 0
    if f.status != lib.TAS_FLOW_ACTIVE or not cc.mode & lib.TAS_CC_SP or cc.cnt_loss != loss_seen:
        return 0
    w = max(cwnd, f.mss)
    if f.flags & lib.TAS_FF_RECOVERY:
        cc.ssthresh = w
    else:
        f.cwnd = w
        cc.ssthresh = w
    cc.pace_rate = rate
    return 1


def count_busy(flows, n_flows: int, budget: int) -> int:
    """Twin of tas_sp_count_busy."""
    busy = 0
    for i in range(min(budget, n_flows)):
        f = flows[i]
        if f.status != lib.TAS_FLOW_ACTIVE:
            continue
        if (f.tx_max > f.tx_una or f.tx_head > f.tx_nxt
                or (f.flags & lib.TAS_FF_TX_FIN and not f.flags & lib.TAS_FF_FIN_ACKED)):
            busy += 1
    return busy


def cc_news(bits, n_flows: int, max_out: int) -> list[int]:
    """tas_sp_cc_news: take up to ``max_out`` marked flow ids from the CC
    news words ``bits`` (a ``uint64_t *``), lowest first, clearing what is
    taken."""
    ids: list[int] = []
    for i in range((n_flows + 63) // 64):
        if len(ids) >= max_out:
            break
        v = int(bits[i])
        if not v:
            continue
        room = max_out - len(ids)
        if bin(v).count("1") > room:
            keep, rest = 0, v
            for _ in range(room):
                keep |= rest & -rest
                rest &= rest - 1
            v = keep
        bits[i] = int(bits[i]) & ~v & U64
        while v:
            low = v & -v
            ids.append(i * 64 + low.bit_length() - 1)
            v ^= low
    return ids


def cc_news_arm(hdr, bits, n_flows: int, armed: bool) -> int:
    """tas_sp_cc_news_arm: set or clear the armed word; arming returns 1 if
    some flow is already marked."""
    hdr.armed = 1 if armed else 0
    if not armed:
        return 0
    return int(any(bits[i] for i in range((n_flows + 63) // 64)))


def krx_drain(krx, ktx, max_n: int, mac: bytes, local_ip: int, st, hdr=None, core: int = 0,
              evfd: int = -1) -> bytes:
    """tas_sp_krx_drain: ``krx``/``ktx`` flextcp.ring.Ring (consumer,
    producer), ``st`` a ``struct tas_sp_drain_stats *``, ``hdr`` the
    ``struct tas_cc_news_hdr *`` for the kick (None: always).  Returns the bytes
    of the entries left for Python (len // TAS_KQ_ENTRY_SIZE of them).
    The echo reply is the one the slow path built before this kernel
    (kernel_slowpath.frames.icmp_echo_reply)."""
    from kernel_slowpath.frames import icmp_echo_reply

    size, off = lib.TAS_KQ_ENTRY_SIZE, 32  # offsetof(struct tas_krx, data)
    replies = st.echo_replies
    out: list[bytes] = []
    p = ffi.new("struct tas_pkt *")
    while len(out) < max_n:
        want = max_n - len(out)
        got = krx.dequeue_n(want)
        k = len(got) // size
        for i in range(k):
            e = got[i * size : (i + 1) * size]
            kind, length = struct.unpack_from("<HH", e, 0)
            if kind == lib.TAS_KRX_PACKET and length <= lib.TAS_KQ_DATA:
                frame = e[off : off + length]
                if (lib.tas_parse_frame(frame, length, p) == lib.TAS_PK_ICMP and p.dst_ip == local_ip
                        and frame[p.l4_off] == 8):
                    reply = icmp_echo_reply(frame, p, mac)
                    entry = bytearray(size)
                    struct.pack_into("<HH", entry, 0, lib.TAS_KTX_FRAME, len(reply))
                    entry[off : off + len(reply)] = reply
                    if ktx.enqueue_n(bytes(entry), 1) == 1:
                        st.echo_replies += 1
                    else:
                        st.ktx_full += 1
                    continue
            out.append(e)
        if k < want:
            break
    if st.echo_replies != replies and evfd >= 0:
        kick(hdr, core, evfd)
    return b"".join(out)


def doorbell(hdr, state: int) -> None:
    """tas_sp_doorbell: ``hdr`` the ``struct tas_cc_news_hdr *`` (the fence
    is C's business; the twin runs single-threaded)."""
    hdr.sp_armed = state


def kick(hdr, core: int, evfd: int) -> int:
    """tas_sp_kick: write evfd only if core sleeps (or is beyond the armed
    words); 1 if it wrote."""
    if hdr is not None and core < lib.TAS_FP_ARMED_CORES and not hdr.fp_armed[core]:
        return 0
    import os

    try:
        os.eventfd_write(evfd, 1)
    except OSError:
        pass
    return 1


def ktx_post(ktx, kind: int, flow_id: int, data: bytes, hdr=None, core: int = 0, evfd: int = -1) -> int:
    """tas_sp_ktx_post: ``ktx`` a flextcp.ring.Ring (producer), ``hdr`` the
    ``struct tas_cc_news_hdr *`` for the kick (None: always)."""
    if len(data) > lib.TAS_KQ_DATA:
        return 0
    entry = bytearray(lib.TAS_KQ_ENTRY_SIZE)
    struct.pack_into("<HHI", entry, 0, kind, len(data), flow_id)
    entry[32 : 32 + len(data)] = data
    ok = 1 if ktx.enqueue_n(bytes(entry), 1) == 1 else 0
    if evfd >= 0:
        kick(hdr, core, evfd)
    return ok
