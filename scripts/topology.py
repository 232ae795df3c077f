#!/usr/bin/env python3
"""Bring the test topology (see nicemu/topology.py) up or down from a shell.

    scripts/topology.py up [--prefix P] [--linux-server] [--link bridge|emu] [--loss PCT]
    scripts/topology.py status [--prefix P]
    scripts/topology.py down [--prefix P]
    scripts/topology.py cleanup --prefix P      # remove every namespace named P*

`up` leaves the namespaces in place and prints their names (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nicemu.topology import Topology, cleanup_stale  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down", "status", "cleanup"])
    ap.add_argument("--prefix", default="tas", help="name prefix (default: tas)")
    ap.add_argument("--linux-server", action="store_true", help="add 198.18.0.3/24 on the stack-side bridge")
    ap.add_argument("--link", choices=["bridge", "emu"], default="bridge")
    ap.add_argument("--loss", type=float, default=None, help="nftables loss percent on the bridge (up only)")
    args = ap.parse_args(argv)

    topo = Topology(args.prefix, linux_server=args.linux_server, link=args.link)
    if args.action == "up":
        topo.up()
        if args.loss:
            topo.add_loss(args.loss)
        names = {
            "peer_ns": topo.peer_ns,
            "stack_ns": topo.stack_ns,
            "peer_veth": topo.peer_veth,
            "stack_veth": topo.stack_veth,
            "bridge": topo.bridge,
            "tap": topo.tap,
            "peer_ip": topo.peer_ip,
            "stack_ip": topo.stack_ip,
        }
        if args.linux_server:
            names["linux_ip"] = topo.linux_ip
        if args.link == "emu":
            names["emu_ports"] = list(topo.emu_ports)
        print(json.dumps(names, indent=2))
    elif args.action == "down":
        topo.down()
    elif args.action == "cleanup":
        print(json.dumps(cleanup_stale(args.prefix)))
    else:
        print(json.dumps(topo.status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
