"""The absolute URL of the next page, for the ``Link: <…>; rel="next"`` header of a JSON page.

Who calls it: the list endpoint of ``connectors.api.app``. RFC 8288 allows a relative
reference, but many SIEM scripted inputs and HTTP helpers follow ``Link`` without resolving it
against the request URL; an absolute one works everywhere.

The URL is the request's own (path and query string as sent, the cursor replaced) under the
origin the client used:

* scheme: ``https`` on a TLS connection, else ``http``;
* authority: the ``Host`` header; without one (HTTP/1.0), the address and port the request
  arrived on.

Behind a proxy that terminates TLS or serves another name, the request's own origin is the
proxy's backend side. With ``api.trust_forwarded_headers`` the first value of
``X-Forwarded-Proto`` (``http`` or ``https``) and of ``X-Forwarded-Host`` replace them. Only
set it when every request reaches ``serve`` through a proxy that overwrites both headers:
otherwise any client chooses the origin its links point to.

A value that is not a plain ``host[:port]`` (user info, spaces, ``>``, a path…) is never put
in a link: a forwarded value like that is ignored, and a bad ``Host`` is replaced by the
address the request arrived on, so a header cannot break or extend the ``Link`` header.
"""

from __future__ import annotations

import ipaddress
import re

from aiohttp import web

# A DNS name or IPv4 address (underscores too: container and service names use them), or an
# IPv6 address in brackets; then an optional port.
_AUTHORITY = re.compile(
    r"(?P<host>[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[(?P<ipv6>[0-9A-Fa-f:.]{2,45})\])"
    r"(?::(?P<port>[0-9]{1,5}))?\Z"
)
_SCHEMES = ("http", "https")


def next_page_url(request: web.Request, cursor: str, *, trust_forwarded: bool) -> str:
    """The absolute URL of this request with ``cursor`` as its cursor parameter."""
    scheme, authority = origin(request, trust_forwarded=trust_forwarded)
    return f"{scheme}://{authority}{request.rel_url.update_query(cursor=cursor)}"


def origin(request: web.Request, *, trust_forwarded: bool) -> tuple[str, str]:
    """The (scheme, authority) the client used to reach the API (module docstring)."""
    scheme = request.scheme
    authority = _checked(request.headers.get("Host")) or _arrival_address(request)
    if trust_forwarded:
        proto = _first(request.headers.get("X-Forwarded-Proto"))
        if proto is not None and proto.lower() in _SCHEMES:
            scheme = proto.lower()
        forwarded_host = _checked(_first(request.headers.get("X-Forwarded-Host")))
        if forwarded_host is not None:
            authority = forwarded_host
    return scheme, authority


def _first(value: str | None) -> str | None:
    """The first of a comma-separated header value (the client-facing proxy's), or None."""
    if value is None:
        return None
    first = value.split(",", 1)[0].strip()
    return first or None


def _checked(authority: str | None) -> str | None:
    """``authority`` if it is a plain ``host[:port]``, else None."""
    if authority is None:
        return None
    match = _AUTHORITY.match(authority)
    if match is None:
        return None
    port = match["port"]
    if port is not None and not 0 < int(port) <= 65535:
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
    return authority


def _arrival_address(request: web.Request) -> str:
    """``address:port`` of the socket the request arrived on (IPv6 in brackets)."""
    sockname = request.get_extra_info("sockname")
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = str(sockname[0]), int(sockname[1])
        if ":" in host:
            host = "[" + host.replace("%", "%25") + "]"  # a zone id's % is escaped in URLs
        return f"{host}:{port}"
    return "localhost"  # a Unix socket: no address a client could use anyway
