"""Who is calling, from gRPC's `context.peer()`: the key of the per-client-address limits.

gRPC names the peer `ipv4:1.2.3.4:5678`, `ipv6:[2001:db8::1]:5678` (with the brackets
percent-encoded by current gRPC versions: `ipv6:%5B::1%5D:5678`) or `unix:/path`. An IPv6
subscriber usually holds a whole /64 and can pick any address in it, so IPv6 clients are keyed
by their /64; an IPv4-mapped IPv6 address (a dual-stack listener) is keyed as the IPv4 address
it is. Clients without an address (Unix sockets, in-process) share one key per transport: on
such a listener every client looks the same, so they share one budget rather than escape it.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import unquote

from grpc import aio

from server.domain.codes import ClientInfo

IPV6_PREFIX = 64


def client_address(peer: str) -> str:
    """The limit key of a gRPC peer string: '1.2.3.4', '2001:db8:1:2::/64', 'unix', ..."""
    scheme, sep, rest = unquote(peer).partition(":")
    if not sep:
        return "unknown"
    if scheme == "ipv4":
        host = rest.rpartition(":")[0]
    elif scheme == "ipv6":
        host = rest.rpartition(":")[0].removeprefix("[").removesuffix("]")
    else:
        return scheme
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{scheme}:{host}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # The zone of a link-local address (fe80::1%eth0) names our interface, not the client.
        bare = ipaddress.IPv6Address(int(ip))
        return str(ipaddress.IPv6Network((bare, IPV6_PREFIX), strict=False))
    return str(ip)


def client_info(context: aio.ServicerContext[Any, Any]) -> ClientInfo:
    """The calling client for the domain: its address key and its text headers (never the
    bearer token: a gate has no business with credentials)."""
    metadata = {
        key.lower(): value
        for key, value in context.invocation_metadata() or ()
        if isinstance(value, str) and key.lower() != "authorization"
    }
    return ClientInfo(address=client_address(context.peer()), metadata=metadata)
