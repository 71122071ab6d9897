"""Which addresses a webhook may be delivered to: no SSRF into the operator's network.

Pure rules over ``ipaddress`` (the engine resolves names and asks here for every address a name
resolves to, at creation and again before every delivery).
"""

from __future__ import annotations

import ipaddress

CGNAT = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 shared address space

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_class(address: IPAddress) -> str:
    """``public``, ``loopback`` or ``private`` (RFC 1918, ULA, link-local, CGNAT, unspecified,
    multicast, reserved and the other special-purpose blocks)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
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


def refusal(address: IPAddress, *, allow_private: bool, allow_loopback: bool) -> str | None:
    """Why a delivery to ``address`` is refused, or None when it is allowed."""
    kind = address_class(address)
    if kind == "public" or allow_private:
        return None
    if kind == "loopback" and allow_loopback:
        return None
    return f"{address} is a {kind} address"
