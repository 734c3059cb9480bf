"""The Linux TUN device: open /dev/net/tun, attach a named interface, read and write packets.

The device is created without IFF_PERSIST, so the kernel removes it (and its routes) when the
file descriptor closes: on exit, on crash, on SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from rustvpn.errors import SystemSetupError
from rustvpn.offload import VNET_HDR_LEN
from rustvpn.tun_steering import steer

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
# What an offload session takes from the kernel: TCP segments of up to 64 KB over IPv4 and IPv6
# with checksums left to complete (checksum offload is a prerequisite of TSO).
OFFLOAD_FLAGS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
# Largest read: a packet of up to 65535 bytes, after the virtio header when there is one.
READ_SIZE = 65535 + VNET_HDR_LEN


class TunDevice:
    """An open TUN interface in non-blocking mode.

    With ``vnet_hdr`` every read and write carries the 10-byte virtio-net header first (see
    offload.py); offloads are switched on and off per session with :meth:`set_offload`.

    With ``side_queue`` the device has a second queue, ``side_fd``, for the sparse traffic the pump
    writes through it (pings and other packets that are neither TCP nor UDP). The kernel sends a
    flow's packets to the queue its packets from the peer were last written on (it learns this per
    flow, for a few seconds), so a ping's request and reply do not wait in the queue of a bulk
    transfer, up to 500 packets (10 ms at 600 Mbit/s), nor get dropped when that queue is full.
    Flows it has not learned it spreads by hash, so a steering program (tun_steering.py) fixes
    the choice where the kernel lets us load it; ``steering`` says which of the two holds.
    """

    def __init__(self, name: str, fd: int, vnet_hdr: bool = False, side_fd: int = -1) -> None:
        self.name = name
        self.fd = fd
        self.side_fd = side_fd
        self.vnet_hdr = vnet_hdr
        self.offload = False
        self.steering = ""

    @classmethod
    def open(cls, name: str, *, vnet_hdr: bool = False, side_queue: bool = False) -> TunDevice:
        if _interface_exists(name):
            raise SystemSetupError(f"device {name!r} already exists: pick another --device or remove it")
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | (IFF_MULTI_QUEUE if side_queue else 0)
        fd = cls._attach(name, flags)
        if not side_queue:
            return cls(name, fd, vnet_hdr)
        try:
            side_fd = cls._attach(name, flags)
        except SystemSetupError:
            os.close(fd)
            raise
        device = cls(name, fd, vnet_hdr, side_fd)
        try:
            steer(fd)
            device.steering = "fixed by a steering program"
        except OSError as exc:
            # (Under the shipped systemd unit: no CAP_BPF, and bpf() is filtered out.)
            device.steering = f"the kernel's choice per flow: no steering program ({exc.strerror or exc})"
        return device

    @staticmethod
    def _attach(name: str, flags: int) -> int:
        """A file descriptor for a (new, or the next) queue of the device."""
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SystemSetupError(f"{TUN_PATH} is missing: load the tun module (modprobe tun)") from None
        except PermissionError:
            raise SystemSetupError(f"cannot open {TUN_PATH}: run as root (or with CAP_NET_ADMIN)") from None
        try:
            request = struct.pack("16sH", name.encode(), flags)
            fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EPERM:
                raise SystemSetupError(f"cannot create device {name!r}: run as root (needs CAP_NET_ADMIN)") from None
            if exc.errno in (errno.EBUSY, errno.EINVAL, errno.EEXIST):
                raise SystemSetupError(f"device {name!r} is taken by another interface or process") from None
            raise SystemSetupError(f"cannot create device {name!r}: {exc.strerror}") from None
        os.set_blocking(fd, False)
        return fd

    def set_offload(self, enabled: bool) -> None:
        """Let the kernel hand over (and take) 64 KB TCP segments, or only finished packets."""
        if not self.vnet_hdr:
            raise SystemSetupError(f"device {self.name!r} was opened without the virtio header")
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, OFFLOAD_FLAGS if enabled else 0)
        self.offload = enabled

    def read(self) -> bytes | None:
        """One packet, or None when nothing is waiting."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None

    def close(self) -> None:
        if self.side_fd >= 0:
            os.close(self.side_fd)
            self.side_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True
