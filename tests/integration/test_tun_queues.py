"""A TUN device with a side queue (tun.py, tun_steering.py) on a real kernel: the steering program
loads, and the kernel puts TCP and UDP on the main queue and everything else (ICMP, ICMPv6) on the
side queue, over IPv4 and IPv6."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

PROBE = str(Path(__file__).with_name("tun_queues.py"))


def test_tcp_and_udp_take_the_main_queue_and_all_else_the_side_queue() -> None:
    netns = f"rvq{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, PROBE, "rvq0"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    found = json.loads(out)
    assert found["steering"] == "fixed by a steering program", found
    # A UDP datagram and a TCP SYN over each IP version, all on the main queue.
    assert sorted(found["main"]) == [6, 6, 17, 17], found
    # The pings (ICMP, ICMPv6), and whatever else IPv6 sent on its own (ICMPv6 too), on the side.
    assert 1 in found["side"] and 58 in found["side"], found
    assert not {6, 17} & set(found["side"]), found


def test_without_the_program_the_kernel_learns_each_flows_queue_from_our_writes() -> None:
    """Where bpf() is not allowed (the shipped systemd unit: no CAP_BPF), the kernel sends a flow's
    packets to the queue its packets from the peer were last written on. The probe writes pings on
    the side queue and a TCP flow on each queue; each flow's answers (echo replies, RSTs) come on the queue
    it was written on, after the first at most (the kernel may answer that one inside the write,
    before it learns)."""
    netns = f"rvq{os.getpid()}l"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", netns, "setpriv", "--bounding-set", "-bpf,-sys_admin",
             sys.executable, PROBE, "rvq1", "learn"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    found = json.loads(out)
    assert found["steering"].startswith("the kernel's choice per flow: no steering program"), found
    for flow, queue in (("ping 101", "side"), ("tcp 40001", "side"), ("tcp 40002", "main")):
        other = "main" if queue == "side" else "side"
        assert found[queue].count(flow) + found[other].count(flow) == 3, (flow, found)  # every answer came
        assert found[queue].count(flow) >= 2, (flow, found)
