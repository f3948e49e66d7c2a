"""A real rsyslogd for the syslog connector's tests, private to one test, on 127.0.0.1 only.

``Rsyslog(directory)`` writes a config, certificates and a pid file into ``directory`` and runs
``rsyslogd -n -f CONF -i PIDFILE`` there (validated with ``-N1`` first). One rsyslogd serves
every transport, each on its own free port and written to its own file, so a test can tell the
transports apart:

- ``udp``: imudp, one datagram one message;
- ``tcp``: imtcp with octet-counted framing (RFC 6587 ``LEN SP MSG``; a frame that does not
  start with a digit is taken as LF-terminated);
- ``tls``: imtcp with the gtls driver (RFC 5425, octet-counted), server-authenticated only: the
  client verifies the server against ``ca_pem`` (names ``localhost`` and ``127.0.0.1``), the
  server asks for no client certificate (AuthMode ``anon``);
- ``relp``: imrelp, plain;
- ``relp_tls``: imrelp over TLS. librelp does either anonymous-DH TLS (no certificates, which
  Python's ssl does not speak) or mutual TLS, so this one is mutual: the client presents
  ``client_pem`` (key and chain for ``RELP_CLIENT_NAME``, signed by the same CA; permitted by
  name) and verifies the server against ``ca_pem``. ``ca`` (a ``trustme.CA``) issues more.

The main queue is ``Direct``: each input's own thread writes the message to its file, with no
queue in between to lose at shutdown, and imrelp answers ``rsp 200`` only once it is written.

Record format of the output files (``rsyslog.output(transport)``): one line per message, the
message's raw bytes (``%rawmsg%``, exactly what arrived: no parsing, no hostname or timestamp
added) JSON-string-escaped (``%rawmsg:::json%``) and then ``\\n``. rsyslog's JSON escaping
turns ``"``, ``\\``, ``/`` and every byte below 0x20 into escapes and copies every other byte
(0x7F and all non-ASCII bytes, valid UTF-8 or not) as it is, so a record never contains a raw
LF, an embedded newline cannot split a message, and ``lines()`` gives back the exact bytes that
arrived. rsyslog itself changes messages in two ways only: a NUL byte becomes the four
characters ``#000`` (always, whatever the parser options), and a message longer than
``MAX_MESSAGE_SIZE`` is cut to that length, the rest dropped (imtcp ``discardTruncatedMsg``;
the next frame still arrives intact while the frame is at most ``MAX_FRAME_SIZE``; librelp
cuts the same way and still answers ``200 OK``). A trailing LF is kept
(``parser.dropTrailingLFOnReception`` off), so is any control character
(``parser.escapeControlCharactersOnReceive`` off).

``restart()`` stops rsyslogd (SIGTERM, which drains what it has read) and starts it again on
the same ports, appending to the same files: ``lines()`` then holds the messages of both runs.

Fixture ``rsyslog`` (function scope: started before the test, stopped after it whatever the
outcome). A test module takes it in by importing ``rsyslog_fixture`` (pytest registers it under
its own name, ``rsyslog``, whatever it is imported as)::

    from tests.rsyslog_support import Rsyslog
    from tests.rsyslog_support import rsyslog_fixture  # noqa: F401 - the fixture "rsyslog"

    def test_something(rsyslog: Rsyslog) -> None: ...

(``pytest_plugins = ["tests.rsyslog_support"]`` does not work in a module that also imports
the helpers: "Module already imported so cannot be rewritten", an error here.) If rsyslogd is
missing the fixture fails (never skips), naming the Debian packages to install
(``scripts/bootstrap`` installs them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
import trustme

from tests.process_support import die_with_parent as _die_with_parent

HOST = "127.0.0.1"
SERVER_NAMES = ("localhost", HOST)  # the names the server certificate holds
RELP_CLIENT_NAME = "relp-client.test"  # the client certificate's name that relp_tls permits
TRANSPORTS = ("udp", "tcp", "tls", "relp", "relp_tls")
DEBIAN_PACKAGES = ("rsyslog", "rsyslog-gnutls", "rsyslog-relp")
MAX_MESSAGE_SIZE = 256 * 1024  # maxMessageSize: the longest message that arrives whole
MAX_FRAME_SIZE = 4 * MAX_MESSAGE_SIZE  # imtcp: up to this, a longer message is cut cleanly

_ERROR_MARK = re.compile(r"\[v\d+\.\d+.*try https?://www\.rsyslog\.com/e/")  # warnings, errors
_ESCAPE = re.compile(rb"\\(?:u([0-9A-Fa-f]{4})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {
    b'"': b'"',
    b"\\": b"\\",
    b"/": b"/",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
}


class RsyslogError(RuntimeError):
    """rsyslogd is missing, rejects its config, or does not come up or go down as it should."""


def missing_message() -> str:
    packages = " ".join(DEBIAN_PACKAGES)
    return (
        "rsyslogd not found: the syslog tests need a real rsyslog. Install the Debian packages "
        f"{packages} (scripts/bootstrap does, as root: apt-get install -y {packages})"
    )


def find_rsyslogd() -> str:
    """Path of rsyslogd (also looked for in /usr/sbin, which a non-root PATH may lack)."""
    found = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if found is None:
        raise RsyslogError(missing_message())
    return found


def decode_record(record: bytes) -> bytes:
    """The raw message bytes of one output line (without its ``\\n``): undo the JSON escapes."""

    def unescape(match: re.Match[bytes]) -> bytes:
        if match.group(1) is not None:
            code = int(match.group(1), 16)
            return bytes([code]) if code < 0x80 else chr(code).encode("utf-8", "surrogatepass")
        try:
            return _SIMPLE_ESCAPES[match.group(2)]
        except KeyError:
            raise ValueError(f"unknown escape {match.group(0)!r} in record {record!r}") from None

    return _ESCAPE.sub(unescape, record)


def octet_counted(message: bytes) -> bytes:
    """One RFC 6587 octet-counted frame: ``LEN SP MSG`` (what the tcp and tls inputs read)."""
    return b"%d %s" % (len(message), message)


def relp_frame(txnr: int, command: str, data: bytes = b"") -> bytes:
    """One RELP frame: ``TXNR SP COMMAND SP DATALEN [SP DATA] LF``."""
    head = b"%d %s %d" % (txnr, command.encode("ascii"), len(data))
    return head + (b" " + data if data else b"") + b"\n"


RELP_OFFER = b"relp_version=0\nrelp_software=siem-export-tests\ncommands=syslog"


def read_relp_frame(sock: socket.socket, timeout: float = 10.0) -> tuple[int, str, bytes]:
    """Read one RELP frame from ``sock``: ``(txnr, command, data)``."""
    sock.settimeout(timeout)

    def receive(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError(f"RELP peer closed the connection (frame so far {data!r})")
            data += chunk
        return data

    header = b""
    while True:  # TXNR SP COMMAND SP DATALEN, then SP (data follows) or LF (no data)
        byte = receive(1)
        if header.count(b" ") == 2 and byte in b" \n":
            break
        header += byte
    txnr, command, length = header.split(b" ")
    data = receive(int(length)) if byte == b" " else b""
    if byte == b" " and receive(1) != b"\n":
        raise ConnectionError(f"RELP frame {header!r} not closed by LF")
    return int(txnr), command.decode("ascii"), data


def _free_ports() -> dict[str, int]:
    """One free loopback port per transport (all held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        for transport in TRANSPORTS:
            kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
            sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
            sock.bind((HOST, 0))
            ports[transport] = sock.getsockname()[1]
        return ports


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _bound_inodes(table: str, port: int, state: str) -> set[str]:
    """Inodes of the sockets in /proc/net/TABLE bound to 127.0.0.1:port in ``state``."""
    local = f"0100007F:{port:04X}"
    inodes: set[str] = set()
    with open(f"/proc/net/{table}", encoding="ascii") as rows:
        next(rows)
        for row in rows:
            fields = row.split()
            if fields[1] == local and fields[3] == state:
                inodes.add(fields[9])
    return inodes


class Rsyslog:
    """A private rsyslogd listening on 127.0.0.1 only (see the module's docstring).

    Start it from the thread that stops it (a test's thread): the daemon is tied to that thread's
    life, so a pytest killed hard leaves no rsyslogd behind.
    """

    def __init__(self, directory: Path, *, start_timeout: float = 15.0) -> None:
        self.directory = directory
        self.start_timeout = start_timeout
        self.ports: dict[str, int] = {}
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "work").mkdir(exist_ok=True)
        self.ca = trustme.CA()
        self.ca_pem = directory / "ca.pem"
        self.cert_pem = directory / "server-cert.pem"
        self.key_pem = directory / "server-key.pem"
        self.client_pem = directory / "relp-client.pem"
        self.ca.cert_pem.write_to_path(self.ca_pem)
        server = self.ca.issue_cert(*SERVER_NAMES)
        server.private_key_pem.write_to_path(self.key_pem)
        with self.cert_pem.open("wb") as chain:
            for blob in server.cert_chain_pems:
                chain.write(blob.bytes())
        self.ca.issue_cert(RELP_CLIENT_NAME).private_key_and_cert_chain_pem.write_to_path(
            self.client_pem
        )
        self.config = directory / "rsyslog.conf"
        self.pid_file = directory / "rsyslogd.pid"
        self.log = directory / "rsyslogd.log"  # rsyslogd's stdout and stderr, all runs
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- life cycle ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """rsyslogd's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether rsyslogd runs."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Rsyslog:
        """Start rsyslogd and wait until it listens on every port (new ports the first time)."""
        if self.running:
            raise RsyslogError("rsyslogd is already running")
        binary = find_rsyslogd()
        fixed = bool(self.ports)  # the ports are fixed once rsyslogd has held them
        attempts = 5 if fixed else 3
        for attempt in range(1, attempts + 1):
            if not fixed:
                self.ports = _free_ports()
            elif attempt > 1:
                time.sleep(0.5)  # give whoever holds one of our ports a moment
            self.config.write_text(self.render_config(), encoding="utf-8")
            self._validate(binary)
            try:
                self._spawn(binary)
                self.starts += 1
                return self
            except _PortTaken:
                if attempt == attempts:
                    raise RsyslogError(
                        f"rsyslogd could not bind its ports\n{self.tail()}"
                    ) from None
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM rsyslogd and wait for it (it drains its inputs first); SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is not None:
            if proc.returncode != 0:  # it died during the test: say so rather than hide it
                raise RsyslogError(f"rsyslogd had died (exit {proc.returncode})\n{self.tail()}")
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise RsyslogError(
                f"rsyslogd (pid {proc.pid}) ignored SIGTERM for {timeout} s: killed\n{self.tail()}"
            ) from None

    def restart(self) -> None:
        """Stop, then start again on the same ports, appending to the same output files."""
        self.stop()
        self.start()

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what arrived ---------------------------------------------------------------------

    def output(self, transport: str) -> Path:
        """The file that ``transport``'s input writes (one record per line, see above)."""
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
        return self.directory / f"{transport}.jsonl"

    def lines(self, transport: str) -> list[bytes]:
        """The messages received so far on ``transport``, in order, byte-exact."""
        try:
            data = self.output(transport).read_bytes()
        except FileNotFoundError:
            return []  # omfile creates the file with the first message
        records = data.split(b"\n")[:-1]  # the last piece is empty or a record being written
        return [decode_record(record) for record in records]

    def wait_for(self, transport: str, count: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until ``transport`` has received at least ``count`` messages; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.lines(transport)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                shown = "\n".join(f"  {line[:200]!r}" for line in got[-10:])
                state = "running" if self.running else "NOT running"
                raise AssertionError(
                    f"rsyslog {transport}: {len(got)} of {count} messages after {timeout} s"
                    f" (rsyslogd {state}; last ones below)\n{shown}\n"
                    f"rsyslogd's log:\n{self.tail()}"
                )
            time.sleep(0.02)

    def tail(self, lines: int = 30) -> str:
        """The end of rsyslogd's own log (its errors, e.g. a failed TLS handshake)."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    # -- config and process ---------------------------------------------------------------

    def render_config(self) -> str:
        """The rsyslog.conf for the current ports and files."""
        d, p = self.directory, self.ports
        flush = 'flushOnTXEnd="on" asyncWriting="off" ioBufferSize="64k"'
        rulesets = "\n".join(
            f'ruleset(name="{t}") {{\n  action(type="omfile" file="{self.output(t)}"'
            f' template="RawJsonLine" {flush})\n}}'
            for t in TRANSPORTS
        )
        tls_files = (
            f'StreamDriver.CAFile="{self.ca_pem}" StreamDriver.CertFile="{self.cert_pem}"\n'
            f'      StreamDriver.KeyFile="{self.key_pem}"'
        )
        return f"""\
# Written by tests/rsyslog_support.py: a private rsyslogd on 127.0.0.1 for the syslog tests.
global(
  workDirectory="{d / "work"}"
  maxMessageSize="{MAX_MESSAGE_SIZE}"
  parser.escapeControlCharactersOnReceive="off"
  parser.dropTrailingLFOnReception="off"
)
# Direct: an input hands each message to its action itself (no queue to lose on shutdown),
# and imrelp acknowledges a message only after it is written.
main_queue(queue.type="Direct")
module(load="imudp")
module(load="imtcp" maxSessions="1000")
module(load="imrelp")

# One line per message: the raw bytes as a JSON string body (no raw LF can appear inside).
template(name="RawJsonLine" type="string" string="%rawmsg:::json%\\n")

{rulesets}

input(type="imudp" address="{HOST}" port="{p["udp"]}" ruleset="udp" rcvBufSize="4m")
input(type="imtcp" address="{HOST}" port="{p["tcp"]}" ruleset="tcp"
      SupportOctetCountedFraming="on" MaxFrameSize="{MAX_FRAME_SIZE}" discardTruncatedMsg="on")
input(type="imtcp" address="{HOST}" port="{p["tls"]}" ruleset="tls"
      SupportOctetCountedFraming="on" MaxFrameSize="{MAX_FRAME_SIZE}" discardTruncatedMsg="on"
      StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"
      {tls_files})
input(type="imrelp" address="{HOST}" port="{p["relp"]}" ruleset="relp")
input(type="imrelp" address="{HOST}" port="{p["relp_tls"]}" ruleset="relp_tls"
      tls="on" tls.authMode="name" tls.permittedPeer=["{RELP_CLIENT_NAME}"]
      tls.caCert="{self.ca_pem}" tls.myCert="{self.cert_pem}" tls.myPrivKey="{self.key_pem}")
"""

    def _validate(self, binary: str) -> None:
        check = subprocess.run(
            [binary, "-N1", "-f", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = (check.stdout + check.stderr).strip()
        if check.returncode != 0 or _ERROR_MARK.search(text):
            hint = ""
            if "module" in text and ("could not load" in text or "not found" in text):
                hint = f"\n(a module is missing: install {' '.join(DEBIAN_PACKAGES)})"
            raise RsyslogError(
                f"rsyslogd -N1 rejects {self.config} (exit {check.returncode}):\n{text}{hint}"
            )

    def _spawn(self, binary: str) -> None:
        self.pid_file.unlink(missing_ok=True)
        started_at = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts + 1} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [binary, "-n", "-f", str(self.config), "-i", str(self.pid_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the only way to set PR_SET_PDEATHSIG
            )
        try:
            self._wait_listening(started_at)
        except BaseException:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
            raise

    def _wait_listening(self, started_at: int) -> None:
        assert self._proc is not None
        wanted = {t: ("udp", "07") if t == "udp" else ("tcp", "0A") for t in TRANSPORTS}
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise RsyslogError(f"rsyslogd exited with {self._proc.returncode}\n{self.tail()}")
            mine = _socket_inodes(self._proc.pid)
            missing = [
                t
                for t, (table, state) in wanted.items()
                if not _bound_inodes(table, self.ports[t], state) & mine
            ]
            new_output = self._log_since(started_at)
            if "Address already in use" in new_output:
                raise _PortTaken
            if not missing:
                if _ERROR_MARK.search(new_output):
                    raise RsyslogError(f"rsyslogd reported a problem at start:\n{new_output}")
                return
            if time.monotonic() > deadline:
                raise RsyslogError(
                    f"rsyslogd does not listen on {', '.join(missing)} after"
                    f" {self.start_timeout} s (ports {self.ports})\n{self.tail()}"
                )
            time.sleep(0.02)

    def _log_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")


class _PortTaken(Exception):
    """Another process took one of the chosen ports before rsyslogd bound it."""


@pytest.fixture(name="rsyslog")
def rsyslog_fixture(tmp_path: Path) -> Iterator[Rsyslog]:
    """A private rsyslogd for one test (see the module's docstring), stopped after it."""
    server = Rsyslog(tmp_path / "rsyslog")
    try:
        server.start()
    except RsyslogError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
