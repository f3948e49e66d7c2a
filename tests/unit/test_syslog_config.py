"""Syslog settings and destination validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from connectors.syslog.config import SyslogDestination, SyslogSettings

pytestmark = pytest.mark.unit


def test_defaults_are_tls_octet_counting_on_6514() -> None:
    dest = SyslogDestination(host="siem.example.com")
    assert (dest.transport, dest.framing, dest.effective_port) == ("tls", "octet_counting", 6514)
    assert dest.endpoint() == "tls://siem.example.com:6514"
    assert SyslogDestination(host="h", transport="udp").effective_port == 514
    assert SyslogDestination(host="h", transport="tcp", port=1514).effective_port == 1514


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"host": "h", "transport": "tcp", "ca_bundle": "/ca.pem"}, "need tls or relp_tls"),
        ({"host": "h", "client_cert": "/c.pem"}, "go together"),
        ({"host": "h", "transport": "udp", "framing": "lf"}, "tcp and tls only"),
        ({"host": "h", "transport": "relay"}, "transport"),
        ({"host": "h", "max_datagram_bytes": 100}, "greater than or equal to 480"),
        ({"host": "h", "prot": 514}, "Extra inputs"),
    ],
)
def test_destination_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SyslogDestination.model_validate(fields)


def test_settings_build_the_message_format_and_reject_bad_header_values() -> None:
    fmt = SyslogSettings(hostname="exporter-1", sd_id="zaita@55555").message_format()
    assert (fmt.hostname, fmt.sd_id, fmt.facility, fmt.utf8_bom) == (
        "exporter-1",
        "zaita@55555",
        13,
        False,
    )
    with pytest.raises(ValidationError, match="hostname"):
        SyslogSettings(hostname="has space")
    with pytest.raises(ValidationError, match="sd_id"):
        SyslogSettings(sd_id="audit")
