"""Test network plumbing: a Linux peer namespace wired to the stack's TAP.

Layout (``<p>`` is a per-run prefix, so parallel runs never collide)::

    netns <p>peer                     netns <p>stk
    +----------------+                +---------------------------------------+
    | <p>v0          |   veth pair    | <p>v1 --+                             |
    | 198.18.0.1/24  |================|         |-- <p>br --- <p>tap (persist) |
    +----------------+                |         |   [198.18.0.3/24 if          |
                                      |         |    linux_server=True]        |
                                      +---------------------------------------+

The userspace stack opens ``<p>tap`` (IFF_TAP|IFF_NO_PI) inside ``<p>stk`` and
claims 198.18.0.2/24 itself; the kernel of ``<p>stk`` has no IPv4 address on
these devices (except 198.18.0.3 on the bridge with ``linux_server=True``).

With ``link="emu"`` the veth twin ``<p>v1`` is *not* bridged.  Instead a
second veth pair ``<p>e0``/``<p>e1`` is created in ``<p>stk``; ``<p>e1`` is
bridged with the TAP, and ``<p>v1`` and ``<p>e0`` are the two ports a link
emulator (:mod:`nicemu.linkemu`) forwards between::

    <p>v0 ==== <p>v1 <-[linkemu]-> <p>e0 ==== <p>e1 -- <p>br -- <p>tap

IPv6 is disabled in both namespaces (no ND/MLD noise on the wire) and
checksum/segmentation offloads are switched off on the veths and the bridge,
so every frame on the wire is a real, complete Ethernet frame.

Network safety: only 198.18.0.0/15 addresses, only inside the namespaces
created here; :meth:`Topology.down` removes everything.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import secrets
import socket
import struct
import subprocess
from collections.abc import Iterator, Sequence

from pyroute2 import IPRoute, netns

NETNS_DIR = "/run/netns"
PEER_IP = "198.18.0.1"
STACK_IP = "198.18.0.2"
LINUX_IP = "198.18.0.3"
PREFIXLEN = 24
IFNAMSIZ = 16
MAX_PREFIX = IFNAMSIZ - 1 - len("tap")

_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_TUNSETOWNER = 0x400454CC
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_MULTI_QUEUE = 0x0100
_SIOCETHTOOL = 0x8946
_NUD_PERMANENT = 0x80
# Legacy ethtool "set one offload" commands (struct ethtool_value).
_ETHTOOL_SGRO = 0x2C
_ETHTOOL_SGSO = 0x24
_ETHTOOL_STSO = 0x1F
_ETHTOOL_SSG = 0x19
_ETHTOOL_STXCSUM = 0x17

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def enter(ns: str) -> Iterator[None]:
    """Run the body with the *calling thread* in network namespace ``ns``.

    Sockets created inside stay in ``ns`` after the block ends.  Only the
    calling thread moves; other threads are unaffected.
    """
    target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(orig)
        finally:
            os.close(orig)
    finally:
        os.close(target)


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def cleanup_stale(prefix: str) -> list[str]:
    """Remove every network namespace whose name starts with ``prefix``.

    Devices inside go with the namespace.  Returns the names removed.  A
    process still running inside such a namespace keeps it alive (it is not
    killed here).
    """
    if not prefix:
        raise ValueError("refusing to clean up with an empty prefix")
    removed = []
    for name in list_namespaces():
        if name.startswith(prefix):
            with contextlib.suppress(OSError, FileNotFoundError):
                netns.remove(name)
                removed.append(name)
    return removed


def _write_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError):
        with open(path, "w") as f:
            f.write(value)


def _ethtool_set(sock: socket.socket, ifname: str, cmd: int, value: int) -> None:
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, value))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf)) + b"\0" * 16
    with contextlib.suppress(OSError):
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)


def _offloads_off(ifnames: Sequence[str]) -> None:
    """Switch off GRO/GSO/TSO/SG/tx-checksum (calling thread's namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for ifname in ifnames:
            for cmd in (_ETHTOOL_SGRO, _ETHTOOL_SGSO, _ETHTOOL_STSO, _ETHTOOL_SSG, _ETHTOOL_STXCSUM):
                _ethtool_set(s, ifname, cmd, 0)


def _create_tap(name: str, owner: int = 0) -> None:
    """Create a persistent TAP (calling thread's namespace)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        # multi-queue, so a stack can run one fast-path core per queue
        ifr = struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_MULTI_QUEUE) + b"\0" * 22
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
        fcntl.ioctl(fd, _TUNSETOWNER, owner)
        fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    finally:
        os.close(fd)


class Topology:
    """Build (on ``up()``/``__enter__``) and remove (``down()``/``__exit__``)
    the peer/stack namespaces.  See the module docstring for the layout.

    ``prefix``: name prefix (default: random ``t`` + 6 hex digits); at most
    ``MAX_PREFIX`` (12) characters so interface names fit IFNAMSIZ.
    ``linux_server``: also put 198.18.0.3/24 on the bridge in the stack
    namespace.  ``link``: ``"bridge"`` (v1 bridged with the TAP) or ``"emu"``
    (v1 and e0 left for a link emulator, see :meth:`linkemu`).
    """

    def __init__(self, prefix: str | None = None, *, linux_server: bool = False, link: str = "bridge"):
        if prefix is None:
            prefix = "t" + secrets.token_hex(3)
        if not prefix or len(prefix) > MAX_PREFIX or not prefix.replace("_", "").isalnum():
            raise ValueError(f"bad prefix {prefix!r} (1..{MAX_PREFIX} alphanumeric chars)")
        if link not in ("bridge", "emu"):
            raise ValueError(f"link must be 'bridge' or 'emu', not {link!r}")
        self.prefix = prefix
        self.linux_server = linux_server
        self.link = link
        self.peer_ns = prefix + "peer"
        self.stack_ns = prefix + "stk"
        self.peer_veth = prefix + "v0"
        self.stack_veth = prefix + "v1"
        self.bridge = prefix + "br"
        self.tap = prefix + "tap"
        # Only used with link="emu": e0 is an emulator port, e1 is bridged.
        self.emu_veth = prefix + "e0"
        self.emu_veth_br = prefix + "e1"
        self.peer_ip = PEER_IP
        self.stack_ip = STACK_IP
        self.linux_ip = LINUX_IP
        self.prefixlen = PREFIXLEN
        self._loss_table: str | None = None
        self._is_up = False

    # -- names ------------------------------------------------------------
    @property
    def emu_ports(self) -> tuple[str, str]:
        """(a, b) interfaces in ``stack_ns`` for the link emulator: a faces the
        Linux peer, b faces the TAP/bridge.  Only meaningful with link="emu"."""
        return (self.stack_veth, self.emu_veth)

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.peer_ns, self.stack_ns)

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> Topology:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> Topology:
        if self._is_up:
            return self
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        self._is_up = True
        return self

    def _build(self) -> None:
        for ns in (self.peer_ns, self.stack_ns):
            if os.path.exists(os.path.join(NETNS_DIR, ns)):
                raise FileExistsError(f"namespace {ns} exists (stale? see cleanup_stale)")
        netns.create(self.peer_ns)
        netns.create(self.stack_ns)
        for ns in (self.peer_ns, self.stack_ns):
            with enter(ns):
                for key in ("all", "default"):
                    _write_sysctl(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "1")
        with enter(self.stack_ns):
            _create_tap(self.tap)

        with IPRoute(netns=self.stack_ns) as ip:
            ip.link(
                "add",
                ifname=self.stack_veth,
                kind="veth",
                peer={"ifname": self.peer_veth, "net_ns_fd": self.peer_ns},
            )
            ip.link("add", ifname=self.bridge, kind="bridge", br_stp_state=0, br_forward_delay=0)
            ports = [self.tap]
            if self.link == "bridge":
                ports.append(self.stack_veth)
            else:
                ip.link("add", ifname=self.emu_veth_br, kind="veth", peer={"ifname": self.emu_veth})
                ports.append(self.emu_veth_br)
            br_idx = ip.link_lookup(ifname=self.bridge)[0]
            for port in ports:
                idx = ip.link_lookup(ifname=port)[0]
                ip.link("set", index=idx, master=br_idx)
            if self.linux_server:
                ip.addr("add", index=br_idx, address=LINUX_IP, prefixlen=PREFIXLEN)
            names = ["lo", self.bridge, self.tap, self.stack_veth]
            if self.link == "emu":
                names += [self.emu_veth, self.emu_veth_br]
            for name in names:
                ip.link("set", index=ip.link_lookup(ifname=name)[0], state="up")

        with IPRoute(netns=self.peer_ns) as ip:
            idx = ip.link_lookup(ifname=self.peer_veth)[0]
            ip.addr("add", index=idx, address=PEER_IP, prefixlen=PREFIXLEN)
            ip.link("set", index=idx, state="up")
            ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")

        with enter(self.peer_ns):
            _offloads_off([self.peer_veth])
        with enter(self.stack_ns):
            offl = [self.stack_veth, self.bridge]
            if self.link == "emu":
                offl += [self.emu_veth, self.emu_veth_br]
            _offloads_off(offl)

    def down(self) -> None:
        """Remove both namespaces (and so every device).  Idempotent."""
        self._loss_table = None
        for ns in (self.peer_ns, self.stack_ns):
            if os.path.exists(os.path.join(NETNS_DIR, ns)):
                with contextlib.suppress(OSError):
                    netns.remove(ns)
        self._is_up = False

    def status(self) -> dict:
        present = set(list_namespaces())
        out: dict = {"prefix": self.prefix, "link": self.link, "namespaces": {}}
        for ns in self.namespaces:
            if ns not in present:
                out["namespaces"][ns] = None
                continue
            with IPRoute(netns=ns) as ip:
                links = {}
                for lnk in ip.get_links():
                    links[lnk.get("ifname")] = lnk.get("operstate")
                addrs = [f"{a.get('address')}/{a['prefixlen']}" for a in ip.get_addr(family=socket.AF_INET)]
            out["namespaces"][ns] = {"links": links, "ipv4": addrs}
        return out

    def pin_linux_neighbors(self) -> None:
        """Permanent ARP entries between the peer (198.18.0.1) and the Linux
        server address (198.18.0.3, needs ``linux_server``), so ARP never
        crosses a lossy wire."""
        if not self.linux_server:
            raise RuntimeError("pin_linux_neighbors needs linux_server=True")
        with IPRoute(netns=self.peer_ns) as ip:
            v0 = ip.link_lookup(ifname=self.peer_veth)[0]
            v0_mac = ip.get_links(v0)[0].get("address")
            with IPRoute(netns=self.stack_ns) as ip2:
                br = ip2.link_lookup(ifname=self.bridge)[0]
                br_mac = ip2.get_links(br)[0].get("address")
                ip2.neigh("replace", dst=PEER_IP, lladdr=v0_mac, ifindex=br, state=_NUD_PERMANENT)
            ip.neigh("replace", dst=LINUX_IP, lladdr=br_mac, ifindex=v0, state=_NUD_PERMANENT)

    # -- running things inside ------------------------------------------------
    def ns_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run_in(self, ns: str, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """``subprocess.Popen`` of ``argv`` inside namespace ``ns``."""
        return subprocess.Popen(self.ns_argv(ns, argv), **popen_kwargs)

    def run(self, ns: str, argv: Sequence[str], **run_kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` of ``argv`` inside namespace ``ns``."""
        return subprocess.run(self.ns_argv(ns, argv), **run_kwargs)

    def enter(self, ns: str):
        """Context manager: calling thread in ``ns`` (see module ``enter``)."""
        return enter(ns)

    # -- impairments -------------------------------------------------------------
    def add_loss(self, percent: float, seed: int | None = None) -> None:
        """Drop ``percent`` % of the frames crossing the bridge, both
        directions, with nftables bridge-family rules (hooks forward, and
        input/output for the ``linux_server`` address).  Replaces an earlier
        rule.  ``seed`` is accepted for API symmetry but nftables' ``numgen
        random`` cannot be seeded; use the link emulator for deterministic
        loss."""
        del seed
        n = round(percent * 10)
        if not 0 <= n <= 1000:
            raise ValueError("percent must be within 0..100")
        table = self.prefix + "loss"
        rules = "\n".join(
            [
                f"table bridge {table}",
                f"delete table bridge {table}",
                f"table bridge {table} {{",
                *(
                    line
                    for hook in ("forward", "input", "output")
                    for line in (
                        f"  chain lossy_{hook} {{",
                        f"    type filter hook {hook} priority 0; policy accept;",
                        f"    numgen random mod 1000 < {n} drop",
                        "  }",
                    )
                ),
                "}",
            ]
        )
        self._nft(rules)
        self._loss_table = table

    def clear_loss(self) -> None:
        if self._loss_table is not None:
            self._nft(f"table bridge {self._loss_table}\ndelete table bridge {self._loss_table}\n")
            self._loss_table = None

    def _nft(self, script: str) -> None:
        r = self.run(
            self.stack_ns, ["nft", "-f", "-"], input=script, text=True, capture_output=True, timeout=30
        )
        if r.returncode != 0:
            raise RuntimeError(f"nft failed: {r.stderr.strip()}")

    # -- link emulator -----------------------------------------------------------
    def linkemu(self, **kwargs):
        """A :class:`nicemu.linkemu.LinkEmu` between :attr:`emu_ports` in the
        stack namespace (needs ``link="emu"``).  Keyword arguments go to
        ``LinkEmu``."""
        if self.link != "emu":
            raise RuntimeError('Topology(link="emu") is needed for a link emulator')
        from nicemu.linkemu import LinkEmu

        a, b = self.emu_ports
        return LinkEmu(self.stack_ns, a, b, **kwargs)
