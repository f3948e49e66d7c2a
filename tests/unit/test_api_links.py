"""The absolute next-page URL: the request's own origin, forwarded headers only when trusted."""

from __future__ import annotations

import ssl
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from connectors.api.links import next_page_url, origin

pytestmark = pytest.mark.unit

PATH = "/v1/audit-events?action=certificate.*&limit=2"


def request(
    headers: dict[str, str],
    path: str = PATH,
    *,
    sockname: Any = ("10.0.0.5", 8080),
    tls: bool = False,
) -> web.Request:
    transport = mock.Mock()
    extra = {"sockname": sockname, "peername": ("192.0.2.1", 50000)}
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    context = ssl.create_default_context() if tls else None
    return make_mocked_request("GET", path, headers, transport=transport, sslcontext=context)


def test_the_link_is_the_request_url_with_the_cursor_under_its_own_origin() -> None:
    url = next_page_url(
        request({"Host": "siem.example.com:8443"}), "abc.def", trust_forwarded=False
    )
    assert url == (
        "http://siem.example.com:8443/v1/audit-events?action=certificate.*&limit=2&cursor=abc.def"
    )
    tls = request({"Host": "siem.example.com"}, tls=True)
    assert next_page_url(tls, "x.y", trust_forwarded=False).startswith("https://siem.example.com/")


def test_the_cursor_of_the_request_is_replaced_not_repeated() -> None:
    req = request({"Host": "h"}, "/v1/audit-events?cursor=old.one&limit=5")
    url = next_page_url(req, "new.one", trust_forwarded=False)
    assert url == "http://h/v1/audit-events?cursor=new.one&limit=5"


def test_forwarded_headers_are_ignored_unless_trusted() -> None:
    headers = {
        "Host": "backend:8080",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "siem.example.com",
    }
    assert origin(request(headers), trust_forwarded=False) == ("http", "backend:8080")
    assert origin(request(headers), trust_forwarded=True) == ("https", "siem.example.com")


def test_the_first_forwarded_value_is_the_client_facing_one() -> None:
    headers = {
        "Host": "backend",
        "X-Forwarded-Proto": "HTTPS, http",
        "X-Forwarded-Host": "siem.example.com:443, lb.internal",
    }
    assert origin(request(headers), trust_forwarded=True) == ("https", "siem.example.com:443")
    # Only a Host from the proxy: the scheme still follows X-Forwarded-Proto.
    only_proto = {"Host": "siem.example.com", "X-Forwarded-Proto": "https"}
    assert origin(request(only_proto), trust_forwarded=True) == ("https", "siem.example.com")


@pytest.mark.parametrize(
    ("proto", "host"),
    [
        ("ftp", 'evil.example>; rel="next", <http://evil.example'),
        ("javascript", "user@evil.example"),
        ("", "evil.example/path"),
        ("https x", "evil.example:99999"),
        ("http\t", "[not:an:ipv6:zz]"),
        (",", " "),
    ],
)
def test_forwarded_values_that_are_not_an_origin_are_ignored(proto: str, host: str) -> None:
    headers = {"Host": "siem.example.com", "X-Forwarded-Proto": proto, "X-Forwarded-Host": host}
    assert origin(request(headers), trust_forwarded=True) == ("http", "siem.example.com")


@pytest.mark.parametrize(
    "host",
    ["siem.example.com", "siem_api:8080", "127.0.0.1:49152", "[2001:db8::1]:8080", "[::1]"],
)
def test_plain_hosts_are_kept(host: str) -> None:
    assert origin(request({"Host": host}), trust_forwarded=False) == ("http", host)


@pytest.mark.parametrize(
    ("host", "sockname", "expected"),
    [
        (None, ("10.0.0.5", 8080), "10.0.0.5:8080"),
        ("bad host>", ("10.0.0.5", 8080), "10.0.0.5:8080"),
        ("a@b", ("2001:db8::5", 8080, 0, 0), "[2001:db8::5]:8080"),
        (None, ("fe80::1%eth0", 8080, 0, 2), "[fe80::1%25eth0]:8080"),
        (None, "/run/siem-export.sock", "localhost"),
    ],
)
def test_without_a_usable_host_the_arrival_address_is_used(
    host: str | None, sockname: Any, expected: str
) -> None:
    headers = {"Host": host} if host is not None else {}
    assert origin(request(headers, sockname=sockname), trust_forwarded=False) == (
        "http",
        expected,
    )
