"""Which network addresses a URL from outside may make us connect to.

One rule for every download whose address someone else chose: a selfie link a user sent
(`bot.fetch`) and an output link a provider answered (`backends.guarded_http`). It lives here,
not in `bot/`, because backends may not import the bot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]

# NAT64 prefixes embed an IPv4 address that a NAT64 gateway would reach on our behalf.
_NAT64_NETWORKS = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses.

    `is_global` alone is not enough: Python counts multicast and site-local IPv6 (fec0::/10,
    deprecated but still routed inside some networks) as global, and IPv6 forms that embed an
    IPv4 address (IPv4-mapped, NAT64, 6to4) must be judged by the embedded address.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        embedded: ipaddress.IPv4Address | None = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in net for net in _NAT64_NETWORKS):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
        if ip.teredo is not None:
            return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_unspecified
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_reserved
    )


def parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class Resolver(Protocol):
    """Turns a host name into IP address strings (IPv4 or IPv6, no brackets)."""

    async def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """The default `Resolver`: the running event loop's getaddrinfo."""

    async def resolve(self, host: str, port: int) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[str] = []
        for family, _type, _proto, _name, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        return addresses
