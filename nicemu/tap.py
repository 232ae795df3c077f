"""The TAP device the emulated NIC owns.

Opening /dev/net/tun with TUNSETIFF attaches to an existing TAP of that
name or creates a new one; a TAP we created lives exactly as long as our
file descriptors, so "remove on stop" is simply closing them.  With more
than one fast-path core the TAP is opened multi-queue, one queue (fd) per
core, so each core reads its own share of the traffic.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import struct
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
VNET_HDR_LEN = 10  # struct virtio_net_hdr
TUN_PATH = "/dev/net/tun"
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class TapError(OSError):
    """The TAP could not be opened; the message says why in one line."""


@dataclass
class Tap:
    name: str
    fds: list[int]
    created: bool

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def offload_wanted() -> bool:
    """TAP offloads (IFF_VNET_HDR + TSO on writes) are used when
    TAS_TAP_OFFLOAD=1, and never with the pure-Python fast path (TAS_PURE)."""
    return os.environ.get("TAS_TAP_OFFLOAD", "0") == "1" and os.environ.get("TAS_PURE", "0") in ("", "0")


def has_vnet_hdr(fd: int) -> bool:
    """True if the TAP queue fd was opened with IFF_VNET_HDR (TUNGETIFF)."""
    try:
        ifr = fcntl.ioctl(fd, TUNGETIFF, b"\0" * 40)
    except OSError:
        return False
    return bool(struct.unpack_from("16sH", ifr)[1] & IFF_VNET_HDR)


def open_tap(name: str, queues: int = 1, offload: bool | None = None) -> Tap:
    """Open (or create) TAP `name` with `queues` non-blocking queue fds.

    ``offload`` (default: :func:`offload_wanted`): open with IFF_VNET_HDR,
    so the fast path can write TSO4 super-segments (one syscall per ~64 KiB);
    no offloads are offered for reads (TUNSETOFFLOAD 0), so the kernel still
    hands us complete, checksummed frames, each after a 10-byte header."""
    if offload is None:
        offload = offload_wanted()
    if not os.path.exists(TUN_PATH):
        raise TapError(f"{TUN_PATH} does not exist: load the tun module or run where TAP devices are allowed")
    if len(name.encode()) > 15:
        raise TapError(f"interface name too long: {name!r}")
    created = not exists(name)
    multi = queues > 1
    if not created:
        # the kernel refuses to attach with a different multi-queue setting
        # than the device was created with, so follow the existing device
        existing = existing_flags(name)
        if existing is not None:
            if queues > 1 and not existing & IFF_MULTI_QUEUE:
                raise TapError(f"TAP {name} is single-queue; --fp-cores {queues} needs a multi-queue TAP "
                               "(create it with `ip tuntap add dev NAME mode tap multi_queue`)")
            multi = bool(existing & IFF_MULTI_QUEUE)
    flags = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if multi else 0) | (IFF_VNET_HDR if offload else 0)
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            fds.append(fd)
            ifr = struct.pack("16sH14x", name.encode(), flags)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            if offload:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError as e:
        for fd in fds:
            os.close(fd)
        hint = " (an existing TAP must be multi-queue for --fp-cores > 1)" if queues > 1 else ""
        raise TapError(e.errno, f"cannot open TAP {name}: {e.strerror}{hint}") from None
    if created:
        _set_up(name)
    return Tap(name, fds, created)


def existing_flags(name: str) -> int | None:
    """IFF_* flags an existing TAP was created with (sysfs tun_flags)."""
    try:
        with open(f"/sys/class/net/{name}/tun_flags") as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return None


def _set_up(name: str) -> None:
    """Bring the interface up (SIOCGIFFLAGS/SIOCSIFFLAGS): no netlink
    library, so it also works inside a running event loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))
    finally:
        sock.close()


def default_mac(tap: str, ip: str) -> bytes:
    """A stable, locally administered unicast MAC for (tap, ip): restarting
    the stack keeps the address peers have cached."""
    h = hashlib.sha256(f"{tap}/{ip}".encode()).digest()
    return bytes([0x02]) + h[:5]


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address: {text!r}")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & 1:
        raise ValueError(f"MAC address must be unicast: {text!r}")
    return mac
