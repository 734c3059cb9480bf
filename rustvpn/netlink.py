"""Addresses, MTU, link state and routes of the TUN device, through netlink (pyroute2)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from rustvpn.cidr import Interface, Network
from rustvpn.errors import SystemSetupError

log = logging.getLogger("rustvpn.netlink")

# IFA_F_NODAD: a point-to-point tunnel has no neighbours to collide with, and duplicate address
# detection would hold an IPv6 address "tentative" (unusable) for a second or two after start.
IFA_F_NODAD = 0x02


def configure_device(
    name: str,
    mtu: int,
    addresses: Iterable[Interface],
    routes: Iterable[Network],
    *,
    gso_max_size: int | None = None,
) -> None:
    """Set MTU (and the largest offloaded segment), add the addresses, bring the link up and install
    routes through the device."""
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise SystemSetupError(f"device {name!r} vanished before it could be configured")
            index = found[0]
            ipr.link("set", index=index, mtu=mtu)
            if gso_max_size is not None:
                ipr.link("set", index=index, gso_max_size=gso_max_size)
            for iface in addresses:
                kwargs = {"index": index, "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
                if isinstance(iface, ipaddress.IPv6Interface):
                    kwargs["flags"] = IFA_F_NODAD
                ipr.addr("replace", **kwargs)
            ipr.link("set", index=index, state="up")
            for net in routes:
                # replace, at the kernel's own IPv6 metric: an address's prefix route may already
                # exist, and we want one route per network, not two at different metrics.
                extra = {"priority": 256} if net.version == 6 else {}
                ipr.route("replace", dst=str(net), oif=index, **extra)
    except NetlinkError as exc:
        raise SystemSetupError(f"netlink refused configuring {name!r}: {exc}") from None
    except PermissionError:
        raise SystemSetupError(f"cannot configure {name!r}: run as root (needs CAP_NET_ADMIN)") from None
