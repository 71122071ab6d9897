"""Which addresses a webhook may be delivered to: no SSRF into the operator's network.

Pure rules over ``ipaddress`` (the engine resolves names and asks here for every address a name
resolves to, at creation and again before every delivery).

An IPv6 address that carries an IPv4 address (IPv4-mapped ``::ffff:0:0/96``, IPv4-compatible
``::/96``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32``: its server and its
client) is judged by the IPv4 rules too: the stricter answer wins. Deprecated site-local
``fec0::/10`` and local-use NAT64 ``64:ff9b:1::/48`` are private.
"""

from __future__ import annotations

import ipaddress

CGNAT = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 shared address space
SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # RFC 3879: deprecated, still routed by some
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: …:a.b.c.d
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: the operator's own translator
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291 (deprecated): ::a.b.c.d

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_STRICTNESS = {"public": 0, "loopback": 1, "private": 2}


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (none for a plain IPv6 address)."""
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)  # (server, client)
    if address in NAT64 or address in IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def _plain_class(address: IPAddress) -> str:
    if address.is_loopback:
        return "loopback"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "private"
    if isinstance(address, ipaddress.IPv6Address) and (
        address in SITE_LOCAL or address in NAT64_LOCAL
    ):
        return "private"
    if (
        address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or not address.is_global
    ):
        return "private"
    return "public"


def address_class(address: IPAddress) -> str:
    """``public``, ``loopback`` or ``private`` (RFC 1918, ULA, site-local, link-local, CGNAT,
    unspecified, multicast, reserved and the other special-purpose blocks, and any IPv6 address
    that carries such an IPv4 address)."""
    if isinstance(address, ipaddress.IPv4Address):
        return _plain_class(address)
    if address.ipv4_mapped is not None:  # the IPv4 address itself, on a dual-stack socket
        return _plain_class(address.ipv4_mapped)
    if address.is_loopback or address.is_unspecified:  # ::1, :: (inside ::/96)
        return _plain_class(address)
    kinds = [_plain_class(address)]
    for inner in embedded_ipv4(address):
        kind = _plain_class(inner)
        # a tunnelled loopback is not this machine: never allowed as loopback is in a sandbox
        kinds.append("private" if kind == "loopback" else kind)
    return max(kinds, key=_STRICTNESS.__getitem__)


def refusal(address: IPAddress, *, allow_private: bool, allow_loopback: bool) -> str | None:
    """Why a delivery to ``address`` is refused, or None when it is allowed."""
    kind = address_class(address)
    if kind == "public" or allow_private:
        return None
    if kind == "loopback" and allow_loopback:
        return None
    return f"{address} is a {kind} address"
