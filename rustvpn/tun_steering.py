"""Which queue of a two-queue TUN device the kernel puts each outgoing packet on.

A TUN device with a side queue (tun.py) has the kernel choose the queue per packet. Left to
itself it uses the queue a flow's packets were last written on, and for a flow it has not seen
written (a local sender's UDP, a flow idle for 3 s) a hash of its addresses and ports: a UDP flood
landed on the side queue half of the time, and with it the pings. A steering program makes the
choice fixed: TCP and UDP on the main queue, everything else (ICMP above all) on the side queue.

The program is eBPF (a socket filter, the program type TUNSETSTEERINGEBPF takes): thirteen
instructions, built here as bytes and loaded with the bpf() system call. Without the privilege to
load it (CAP_BPF or CAP_SYS_ADMIN) the device keeps the kernel's own choice.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import struct

# bpf() commands and program types (uapi/linux/bpf.h).
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
TUNSETSTEERINGEBPF = 0x800454E0  # _IOR('T', 224, int)
SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

# Instruction classes and fields.
_LD, _ALU64, _JMP = 0x00, 0x07, 0x05
_ABS, _B = 0x20, 0x10
_K, _X = 0x00, 0x08
_MOV, _RSH = 0xB0, 0x70
_JEQ, _JA, _EXIT = 0x10, 0x00, 0x90
R0, R1, R6 = 0, 1, 6

MAIN_QUEUE, SIDE_QUEUE = 0, 1
IPPROTO_TCP, IPPROTO_UDP = 6, 17


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def steering_program() -> bytes:
    """The instructions: the IP version from the first byte, then the protocol (IPv4 byte 9, IPv6
    byte 6); TCP and UDP get the main queue, anything else the side queue. A packet too short to
    read ends the program with 0: the main queue."""
    return b"".join(
        (
            _insn(_ALU64 | _MOV | _X, R6, R1),  # the packet loads read the context in r6
            _insn(_LD | _ABS | _B, imm=0),  # r0 = first byte
            _insn(_ALU64 | _RSH | _K, R0, imm=4),  # its version
            _insn(_JMP | _JEQ | _K, R0, off=2, imm=6),  # IPv6: to the load of byte 6
            _insn(_LD | _ABS | _B, imm=9),  # IPv4 protocol
            _insn(_JMP | _JA, off=1),
            _insn(_LD | _ABS | _B, imm=6),  # IPv6 next header
            _insn(_JMP | _JEQ | _K, R0, off=3, imm=IPPROTO_TCP),
            _insn(_JMP | _JEQ | _K, R0, off=2, imm=IPPROTO_UDP),
            _insn(_ALU64 | _MOV | _K, R0, imm=SIDE_QUEUE),
            _insn(_JMP | _EXIT),
            _insn(_ALU64 | _MOV | _K, R0, imm=MAIN_QUEUE),
            _insn(_JMP | _EXIT),
        )
    )


class _ProgLoad(ctypes.Structure):
    """The head of union bpf_attr for BPF_PROG_LOAD, up to kern_version."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
    ]


def load_program(code: bytes) -> int:
    """Load socket-filter instructions; the program's file descriptor. OSError if the kernel
    refuses (no privilege, no bpf() on this machine, a program its verifier rejects)."""
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(0, f"no bpf() system call number known for {platform.machine()}")
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"MIT")
    attr = _ProgLoad(
        prog_type=BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license),
    )
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.syscall(ctypes.c_long(number), ctypes.c_int(BPF_PROG_LOAD), ctypes.byref(attr), ctypes.sizeof(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def steer(tun_fd: int) -> None:
    """Give the device of ``tun_fd`` the steering program (the device keeps its own reference)."""
    prog = load_program(steering_program())
    try:
        fcntl.ioctl(tun_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog))
    finally:
        os.close(prog)
