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

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
# Largest packet a read may return: the TUN MTU is at most 65535.
READ_SIZE = 65535


class TunDevice:
    """An open TUN interface in non-blocking mode."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd

    @classmethod
    def open(cls, name: str) -> TunDevice:
        if _interface_exists(name):
            raise SystemSetupError(f"device {name!r} already exists: pick another --device or remove it")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SystemSetupError(f"{TUN_PATH} is missing: load the tun module (modprobe tun)") from None
        except PermissionError:
            raise SystemSetupError(f"cannot open {TUN_PATH}: run as root (or with CAP_NET_ADMIN)") from None
        try:
            request = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EPERM:
                raise SystemSetupError(f"cannot create device {name!r}: run as root (needs CAP_NET_ADMIN)") from None
            if exc.errno in (errno.EBUSY, errno.EINVAL, errno.EEXIST):
                raise SystemSetupError(f"device {name!r} is taken by another interface or process") from None
            raise SystemSetupError(f"cannot create device {name!r}: {exc.strerror}") from None
        os.set_blocking(fd, False)
        return cls(name, fd)

    def read(self) -> bytes | None:
        """One packet, or None when nothing is waiting."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> bool:
        """Hand one packet to the kernel; False if it was dropped (queue full or rejected)."""
        try:
            os.write(self.fd, packet)
            return True
        except OSError:
            # EAGAIN (kernel queue full) or EINVAL (not an IP packet): drop it like a router would.
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True
