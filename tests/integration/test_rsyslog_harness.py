"""The real-rsyslog harness (tests/rsyslog_support.py) proven with plain Python clients: every
transport delivers byte-exact, exactly once, into its own file, and a restart keeps the ports
and the files. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import pytest

from tests.rsyslog_support import (
    MAX_MESSAGE_SIZE,
    RELP_OFFER,
    TRANSPORTS,
    Rsyslog,
    RsyslogError,
    decode_record,
    find_rsyslogd,
    octet_counted,
    read_relp_frame,
    relp_frame,
    rsyslog_fixture,  # noqa: F401 - the fixture "rsyslog"
)

pytestmark = pytest.mark.integration

RFC5424 = b"<165>1 2024-05-06T07:08:09.123Z host.example siem-export 42 ID47 - an audit event"
MULTILINE = (
    '<165>1 2024-05-06T07:08:09Z h siem-export - - - {"who":"Zoë","what":"ünïcødé €"}\n'
    'second line\r\n\tthird line, a quote " a backslash \\ a slash / done\n'
).encode()


def connect(rsyslog: Rsyslog, transport: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", rsyslog.ports[transport]), timeout=10)


def client_tls(rsyslog: Rsyslog, *, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(rsyslog.ca_pem))  # checks the hostname
    if client_cert:
        context.load_cert_chain(str(rsyslog.client_pem))
    return context


@contextmanager
def tls_connection(
    rsyslog: Rsyslog, transport: str, server_hostname: str = "localhost", client_cert: bool = False
) -> Iterator[ssl.SSLSocket]:
    context = client_tls(rsyslog, client_cert=client_cert)
    with (
        closing(connect(rsyslog, transport)) as sock,
        closing(context.wrap_socket(sock, server_hostname=server_hostname)) as tls,
    ):
        yield tls
        # Our close_notify, so rsyslogd logs no broken session; rsyslogd answers it by closing
        # the connection without a close_notify of its own, which unwrap() takes as an error.
        with suppress(ssl.SSLEOFError):
            tls.unwrap()


def others_empty(rsyslog: Rsyslog, transport: str) -> None:
    for other in TRANSPORTS:
        if other != transport:
            assert rsyslog.lines(other) == [], f"{other} received what was sent over {transport}"


def send_octet_counted(sock: socket.socket, messages: list[bytes]) -> None:
    """All frames in one stream, cut at odd places so framing, not send() calls, delimits."""
    stream = b"".join(octet_counted(message) for message in messages)
    for start in range(0, len(stream), 7919):
        sock.sendall(stream[start : start + 7919])


def test_udp_datagram_arrives_once(rsyslog: Rsyslog) -> None:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as udp:
        udp.sendto(RFC5424, ("127.0.0.1", rsyslog.ports["udp"]))
        udp.sendto(MULTILINE, ("127.0.0.1", rsyslog.ports["udp"]))

    assert rsyslog.wait_for("udp", 2) == [RFC5424, MULTILINE]
    others_empty(rsyslog, "udp")


def test_tcp_octet_counted_is_byte_exact(rsyslog: Rsyslog) -> None:
    every_byte = bytes(range(1, 256))  # all but NUL, which rsyslog always turns into "#000"
    big = b"<14>1 - h app - - - " + os.urandom(100_000).hex().encode()  # 200 KB, one frame
    messages = [RFC5424, MULTILINE, every_byte, b"trailing LF\n", b"\\u0041 stays", big]

    with closing(connect(rsyslog, "tcp")) as tcp:
        send_octet_counted(tcp, messages)

    assert rsyslog.wait_for("tcp", len(messages)) == messages
    others_empty(rsyslog, "tcp")


def test_message_size_limit(rsyslog: Rsyslog) -> None:
    """A message of MAX_MESSAGE_SIZE bytes arrives whole; a longer one is cut, framing holds."""
    largest = b"<14>1 - h app - - - " + b"L" * (MAX_MESSAGE_SIZE - 20)
    with closing(connect(rsyslog, "tcp")) as tcp:
        send_octet_counted(
            tcp, [largest, largest + b"!", b"next", largest + b"?" * 100_000, b"last"]
        )

    assert rsyslog.wait_for("tcp", 5) == [largest, largest, b"next", largest, b"last"]


def test_nul_bytes_are_rewritten_by_rsyslog(rsyslog: Rsyslog) -> None:
    """rsyslog's one change to a message (documented in the harness): NUL becomes ``#000``."""
    with closing(connect(rsyslog, "tcp")) as tcp:
        tcp.sendall(octet_counted(b"a\x00b"))

    assert rsyslog.wait_for("tcp", 1) == [b"a#000b"]


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_tls_verified_and_byte_exact(rsyslog: Rsyslog, server_hostname: str) -> None:
    with tls_connection(rsyslog, "tls", server_hostname) as tls:
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        send_octet_counted(tls, [RFC5424, MULTILINE])

    assert rsyslog.wait_for("tls", 2) == [RFC5424, MULTILINE]
    others_empty(rsyslog, "tls")


def test_tls_server_is_not_trusted_without_the_harness_ca(rsyslog: Rsyslog) -> None:
    context = ssl.create_default_context()  # the system's CAs only
    with closing(connect(rsyslog, "tls")) as sock, pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(sock, server_hostname="localhost")


def relp_session(sock: socket.socket, messages: list[bytes]) -> list[tuple[int, str, bytes]]:
    """open, one ``syslog`` command per message, close; every answer read in turn."""
    sock.sendall(relp_frame(1, "open", RELP_OFFER))
    answers = [read_relp_frame(sock)]
    for txnr, message in enumerate(messages, start=2):
        sock.sendall(relp_frame(txnr, "syslog", message))
        answers.append(read_relp_frame(sock))
    sock.sendall(relp_frame(len(messages) + 2, "close"))
    answers.append(read_relp_frame(sock))
    answers.append(read_relp_frame(sock))  # the server's own "serverclose"
    return answers


def check_relp_answers(answers: list[tuple[int, str, bytes]], count: int) -> None:
    txnr, command, offer = answers[0]
    assert (txnr, command) == (1, "rsp")
    assert offer.startswith(b"200 OK\n"), offer
    assert b"relp_version=0" in offer and b"commands=syslog" in offer, offer
    assert answers[1 : count + 1] == [(n, "rsp", b"200 OK") for n in range(2, count + 2)]
    assert answers[count + 1 :] == [(count + 2, "rsp", b""), (0, "serverclose", b"")]


def test_relp_open_syslog_close(rsyslog: Rsyslog) -> None:
    # The exact bytes on the wire, for the record: the open offer and a 1-message command.
    assert relp_frame(1, "open", RELP_OFFER) == (
        b"1 open 62 relp_version=0\nrelp_software=siem-export-tests\ncommands=syslog\n"
    )
    assert relp_frame(2, "syslog", b"<13>1 - - - - - - x") == b"2 syslog 19 <13>1 - - - - - - x\n"

    with closing(connect(rsyslog, "relp")) as sock:
        sock.sendall(relp_frame(1, "open", RELP_OFFER))
        txnr, command, offer = read_relp_frame(sock)
        assert (txnr, command) == (1, "rsp") and offer.startswith(b"200 OK\n"), offer
        sock.sendall(relp_frame(2, "syslog", MULTILINE))
        ack = b""
        while not ack.endswith(b"\n"):
            ack += sock.recv(100)
        assert ack == b"2 rsp 6 200 OK\n"  # the ack, byte for byte
        # Imrelp acknowledges only after omfile wrote it (Direct main queue): no waiting.
        assert rsyslog.lines("relp") == [MULTILINE]
        sock.sendall(relp_frame(3, "close"))
        assert read_relp_frame(sock) == (3, "rsp", b"")

    others_empty(rsyslog, "relp")


def test_relp_over_tls_with_client_certificate(rsyslog: Rsyslog) -> None:
    messages = [RFC5424, MULTILINE]
    with tls_connection(rsyslog, "relp_tls", client_cert=True) as tls:
        answers = relp_session(tls, messages)

    check_relp_answers(answers, len(messages))
    assert rsyslog.lines("relp_tls") == messages
    others_empty(rsyslog, "relp_tls")


def test_relp_over_tls_refuses_a_client_without_certificate(rsyslog: Rsyslog) -> None:
    context = client_tls(rsyslog)  # trusts the server, but has no certificate to show
    with (
        closing(connect(rsyslog, "relp_tls")) as sock,
        pytest.raises((ssl.SSLError, ConnectionError)),  # TLS 1.3: shows on first use
        closing(context.wrap_socket(sock, server_hostname="localhost")) as tls,
    ):
        relp_session(tls, [RFC5424])
    assert rsyslog.lines("relp_tls") == []


def test_restart_keeps_ports_and_files(rsyslog: Rsyslog) -> None:
    ports, pid = dict(rsyslog.ports), rsyslog.pid
    before = [b"<13>1 - h app - - - before %d" % n for n in range(50)]
    after = [b"<13>1 - h app - - - after %d" % n for n in range(50)]

    with closing(connect(rsyslog, "tcp")) as stale:
        send_octet_counted(stale, before)
        with closing(connect(rsyslog, "relp")) as sock:
            check_relp_answers(relp_session(sock, before[:3]), 3)
        rsyslog.wait_for("tcp", len(before))

        rsyslog.restart()  # with a client still connected

        assert rsyslog.ports == ports
        assert rsyslog.pid is not None and rsyslog.pid != pid
        with suppress(ConnectionResetError):  # the old rsyslogd closed it when it stopped
            assert stale.recv(1) == b""
    with closing(connect(rsyslog, "tcp")) as tcp:
        send_octet_counted(tcp, after)
    with closing(connect(rsyslog, "relp")) as sock:
        check_relp_answers(relp_session(sock, after[:3]), 3)
    assert rsyslog.wait_for("tcp", len(before) + len(after)) == before + after
    assert rsyslog.lines("relp") == before[:3] + after[:3]


def test_context_manager_leaves_no_process(tmp_path: Path) -> None:
    with Rsyslog(tmp_path / "own") as server:
        pid = server.pid
        assert pid is not None
        os.kill(pid, 0)  # alive
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_invalid_config_fails_with_rsyslogs_own_words(tmp_path: Path) -> None:
    class Broken(Rsyslog):
        def render_config(self) -> str:
            return super().render_config() + 'input(type="imudp" port="1" no_such_option="1")\n'

    broken = Broken(tmp_path / "broken")
    with pytest.raises(RsyslogError, match="-N1 rejects(.|\n)*no_such_option"):
        broken.start()
    assert broken.pid is None


def test_decode_record_undoes_rsyslog_json_escapes() -> None:
    record = rb"a\"b\\c\/d\n\r\t\b\f\u0001\u001F\u00e9" + b" \xc3\xa9 \xff \x7f"
    assert decode_record(record) == b'a"b\\c/d\n\r\t\b\f\x01\x1f\xc3\xa9 \xc3\xa9 \xff \x7f'
    with pytest.raises(ValueError, match="unknown escape"):
        decode_record(rb"\q")


def test_missing_rsyslogd_names_the_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda *args, **kwargs: None)
    with pytest.raises(RsyslogError, match="rsyslog rsyslog-gnutls rsyslog-relp"):
        find_rsyslogd()
