"""The `tas` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="stack state directory (default: $TAS_STATE_DIR or /run/tas/default)")


def cmd_start(a: argparse.Namespace) -> int:
    from kernel_slowpath import stack

    if not 1 <= a.ctx_region_mb <= 4095:
        print("tas start: --ctx-region-mb must be between 1 and 4095", file=sys.stderr)
        return 2
    if min(a.app_max_flows if a.app_max_flows is not None else 0, a.app_max_buf_mb, a.app_syn_backlog) < 0:
        print("tas start: --app-max-flows, --app-max-buf-mb and --app-syn-backlog must be >= 0", file=sys.stderr)
        return 2
    try:
        cfg = stack.parse_config(a.tap, a.ip, a.mac, a.gateway, a.fp_cores, a.state_dir,
                                 n_flows=a.max_flows, poll_us=a.poll_us, rx_buf=a.rx_buf, tx_buf=a.tx_buf,
                                 allowed_uids=set(a.allow_uid) | {0} if a.allow_uid else None,
                                 allow_privileged_ports=a.allow_privileged_ports,
                                 keepalive=(a.keepalive_idle, a.keepalive_intvl, a.keepalive_cnt),
                                 strike_limit=a.strike_limit, region_len=a.ctx_region_mb << 20,
                                 max_app_contexts=a.max_app_contexts, app_max_flows=a.app_max_flows,
                                 app_max_buf=a.app_max_buf_mb << 20, app_syn_backlog=a.app_syn_backlog,
                                 **_cc_config(a))
    except stack.StartError as e:
        print(f"tas start: {e}", file=sys.stderr)
        return 2
    return stack.run(cfg)


# kernel_slowpath.ccloop.CHOICES (not imported here: `tas` starts fast)
CC_CHOICES = ("const", "cubic", "dctcp", "fp-newreno", "newreno")


def _cc_config(a: argparse.Namespace) -> dict:
    """Congestion-control options of `tas start` (docs/CC.md)."""
    from kernel_slowpath import stack

    if a.cc_interval_us < 0:
        raise stack.StartError("--cc-interval-us must be >= 0")
    rate = _parse_rate(a.cc_rate) if a.cc_rate else 0
    return {"cc": a.cc, "cc_interval_us": a.cc_interval_us, "cc_rate_bps": rate, "cc_pacing": not a.no_pacing,
            "ecn": a.ecn}  # fmt: skip


def _parse_rate(text: str) -> int:
    """'100M', '1.5G', '800k' or plain bits per second."""
    from kernel_slowpath import stack

    t = text.strip().lower().removesuffix("bit").removesuffix("bps").removesuffix("b")
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}.get(t[-1:], 1)
    try:
        v = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise stack.StartError(f"bad rate {text!r}: e.g. 100M, 1G, 800k (bits per second)") from None
    if v <= 0:
        raise stack.StartError(f"bad rate {text!r}: must be positive")
    return int(v)


def _client(a: argparse.Namespace):
    from libtas.api import Stack

    try:
        return Stack(a.state_dir)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"tas: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_stats(a: argparse.Namespace) -> int:
    from kernel_slowpath.statsview import render_stats

    if a.watch:
        from kernel_slowpath.statsview import watch

        with _client(a) as s:
            return watch(s.stats, s.flows, interval=a.interval, count=a.count)
    with _client(a) as s:
        st = s.stats()
    if a.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(render_stats(st))
    return 0


def cmd_flows(a: argparse.Namespace) -> int:
    from kernel_slowpath.statsview import render_flows

    with _client(a) as s:
        flows = s.flows()
    print(json.dumps(flows, indent=2) if a.json else render_flows(flows))
    return 0


def cmd_echo(a: argparse.Namespace) -> int:
    if a.threads > 1:
        from libtas.echo_threads import main as main_threads

        return main_threads(a.port, a.state_dir, a.threads)
    from libtas.echo import main

    return main(a.port, a.state_dir)


def cmd_kv(a: argparse.Namespace) -> int:
    from libtas.kvserver import main

    return main(a.port, a.state_dir, max_memory=a.max_memory, kernel=a.kernel, bind=a.bind)


def cmd_trace(a: argparse.Namespace) -> int:
    from kernel_slowpath.trace import run

    return run(a.state_dir, a.out, flow_id=a.flow, duration=a.duration, csv_path=a.csv,
               interval_ms=a.interval_ms, iface=a.iface, max_frames=a.max_frames)


def cmd_demo(a: argparse.Namespace) -> int:
    from kernel_slowpath.demo import main

    return main(a)


def cmd_bench(a: argparse.Namespace) -> int:
    from kernel_slowpath.bench import main

    return main(a)


def cmd_run(a: argparse.Namespace) -> int:
    from libtas.shim.launcher import run

    return run(a.state_dir, a.command)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tas", description="A userspace TCP stack (TAS/FlexTCP design) over a TAP device.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (debug: one line per connection event)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("start", help="run the stack in the foreground",
                       description="Run the slow path, start the fast-path processes and the NIC emulation on a "
                                   "TAP device.  Prints a line containing 'ready' when apps can connect.")
    s.add_argument("--tap", required=True, help="TAP interface (created if missing, removed on stop if created)")
    s.add_argument("--ip", required=True, help="the stack's IPv4 address with prefix, e.g. 198.18.0.2/24")
    s.add_argument("--mac", help="MAC address (default: stable, derived from TAP name and IP)")
    s.add_argument("--gateway", help="IPv4 next hop for destinations outside the prefix")
    s.add_argument("--fp-cores", type=int, default=1, help="fast-path processes, one per core (default 1)")
    _add_state_dir(s)
    s.add_argument("--max-flows", type=int, default=16384, help="flow table size (default 16384)")
    s.add_argument("--poll-us", type=int, default=500,
                   help="busy-poll this long after the last work before sleeping (default 500)")
    s.add_argument("--rx-buf", type=int, default=256 << 10, help="default receive buffer per flow (bytes)")
    s.add_argument("--tx-buf", type=int, default=256 << 10, help="default send buffer per flow (bytes)")
    s.add_argument("--allow-uid", type=int, action="append", metavar="UID",
                   help="let apps of this uid register (repeatable; default: root only)")
    s.add_argument("--allow-privileged-ports", action="store_true",
                   help="let any app use ports below 1024 (default: uid 0 or CAP_NET_BIND_SERVICE)")
    s.add_argument("--strike-limit", type=int, default=1024, metavar="N",
                   help="disconnect an app after N invalid queue entries (0: never; default 1024)")
    s.add_argument("--ctx-region-mb", type=int, default=256, metavar="MIB",
                   help="shared memory per app context for flow buffers (default 256)")
    s.add_argument("--max-app-contexts", type=int, default=64, metavar="N",
                   help="contexts per app (bounds its memory to N x --ctx-region-mb; 0: no limit; default 64)")
    s.add_argument("--app-max-flows", type=int, default=None, metavar="N",
                   help="open flows per app, accept queues included (connect past it: EMFILE; SYNs for its "
                        "listeners: RST); an app may ask for less at registration; 0: no limit; default: half "
                        "of --max-flows")
    s.add_argument("--app-max-buf-mb", type=int, default=1024, metavar="MIB",
                   help="flow buffer memory per app, over all its contexts (connect past it: ENOBUFS; SYNs: "
                        "RST); 0: no limit; default 1024")
    s.add_argument("--app-syn-backlog", type=int, default=1024, metavar="N",
                   help="half-open connections per app over all its listeners, and the largest listen backlog "
                        "(beyond: SYN cookies); 0: no limit; default 1024")
    s.add_argument("--cc", default="cubic", choices=CC_CHOICES,
                   help="congestion control: newreno, cubic (the default, RFC 9438 as Linux), dctcp, const run by "
                        "the slow path; fp-newreno: NewReno inside the fast path alone (docs/CC.md)")
    s.add_argument("--cc-interval-us", type=int, default=1000, metavar="US",
                   help="control interval per flow (default 1000; 0: max(1 ms, srtt) of each flow)")
    s.add_argument("--cc-rate", metavar="RATE", help="--cc const: the fixed rate, e.g. 100M (bits/s)")
    s.add_argument("--ecn", action=argparse.BooleanOptionalAction, default=None,
                   help="negotiate ECN (RFC 3168) on connections (default: only with --cc dctcp)")
    s.add_argument("--no-pacing", action="store_true",
                   help="do not pace window-based algorithms (cwnd/srtt x 2 in slow start, x 1.2 after)")
    s.add_argument("--keepalive-idle", type=float, default=7200.0, metavar="S",
                   help="SO_KEEPALIVE flows: probe after S seconds without a segment from the peer (default 7200)")
    s.add_argument("--keepalive-intvl", type=float, default=75.0, metavar="S",
                   help="seconds between unanswered keepalive probes (default 75)")
    s.add_argument("--keepalive-cnt", type=int, default=9, metavar="N",
                   help="unanswered probes before the flow is reset with ETIMEDOUT (default 9)")
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("stats", help="counters of a running stack (see docs/STATS.md)")
    _add_state_dir(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--watch", action="store_true",
                   help="live view: per-core load, throughput, flows, retransmits, drops (Ctrl-C to stop)")
    s.add_argument("--interval", type=float, default=1.0, help="with --watch: seconds between refreshes")
    s.add_argument("--count", type=int, default=None, help="with --watch: stop after this many refreshes")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("flows", help="open flows of a running stack (like ss -ti)")
    _add_state_dir(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_flows)

    s = sub.add_parser("echo-server", help="TCP echo server on the native API")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--threads", type=int, default=1,
                   help="application threads, one context each, sharing the port (new connections round robin)")
    _add_state_dir(s)
    s.set_defaults(func=cmd_echo)

    s = sub.add_parser("kv-server", help="Redis-protocol (RESP2, RESP3 after HELLO 3) key-value server on the native API",
                       description="A key-value server speaking RESP2 (redis-cli, redis-benchmark, redis-py "
                                   "work with it).  Commands and limits: docs/KV.md.")
    s.add_argument("--port", type=int, required=True)
    _add_state_dir(s)
    s.add_argument("--max-memory", type=int, default=0,
                   help="refuse writes (OOM error) once keys+values would exceed this many bytes (0 = no limit)")
    s.add_argument("--kernel", action="store_true",
                   help="run the same server on Linux sockets instead of the stack (for comparison)")
    s.add_argument("--bind", default="0.0.0.0", help="with --kernel: address to bind (default 0.0.0.0)")
    s.set_defaults(func=cmd_kv)

    s = sub.add_parser("trace", help="pcap of what the stack sends and receives, plus a per-flow CSV",
                       description="Capture the stack's frames on its TAP (run in the stack's network namespace) "
                                   "into a classic pcap, and sample cwnd/srtt/in-flight/snd_wnd of the flows "
                                   "into a CSV.  Stops after --duration or on Ctrl-C.")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--all", action="store_true", help="every frame (all flows, ARP, ICMP)")
    g.add_argument("--flow", type=int, help="only this flow's frames (id from tas flows)")
    s.add_argument("--out", required=True, help="pcap file to write")
    s.add_argument("--csv", help="per-flow CSV (default: --out with .csv)")
    s.add_argument("--duration", type=float, help="seconds to capture (default: until Ctrl-C)")
    s.add_argument("--interval-ms", type=float, default=10.0, help="flow sampling period (default 10 ms)")
    s.add_argument("--iface", help="capture interface (default: the stack's TAP, found automatically)")
    s.add_argument("--max-frames", type=int, help="stop after this many frames")
    _add_state_dir(s)
    s.set_defaults(func=cmd_trace)

    s = sub.add_parser("demo", help="build a test network, run the stack and Linux side by side, print results")
    s.add_argument("--requests", type=int, default=2000, help="echo round trips per server (default 2000)")
    s.add_argument("--bulk-mib", type=int, default=32, help="bulk transfer size in MiB (default 32)")
    s.add_argument("--parallel", type=int, default=16, help="concurrent connections (default 16)")
    s.add_argument("--conns", type=int, default=200, help="connections for the connection rate (default 200)")
    s.add_argument("--step-timeout", type=float, default=30.0, help="seconds per measurement (default 30)")
    s.add_argument("--keep", action="store_true", help="leave the topology up (for debugging)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("bench", help="benchmark the stack against Linux TCP (see docs/PERFORMANCE.md)",
                       description="Build a test network, run a C load generator against the stack's native "
                                   "servers, the socket shim (if `tas run` exists) and Linux; print a table with "
                                   "ratios, write out/bench/results.json and plots.")
    from kernel_slowpath.bench import add_arguments as _bench_args

    _bench_args(s)
    s.set_defaults(func=cmd_bench)
    s = sub.add_parser("run", help="run a program with its TCP/IPv4 sockets on the stack (socket shim)",
                       description="Run CMD (exec'd, so signals and exit status are its own) with the TAS socket "
                                   "shim active in every Python process it starts.  See docs/SHIM.md.")
    _add_state_dir(s)
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    s.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, a.log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
