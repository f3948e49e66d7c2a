"""The syslog part of ``siem-export demo`` (step 6): the real connector into a local rsyslog.

Starts a private ``rsyslogd`` in a temporary directory: one imtcp input on 127.0.0.1 and a free
port (octet-counted framing, as the connector sends), every message written as it arrived, one
per line, to a file. Writes a destinations file that sends every tenant there over plain TCP
(the demo has no certificates; production uses tls, the default, and the step says so), runs
``siem-export run syslog`` as its own process in a fresh consumer group (``demo_support``),
waits until the file holds every event of this demo run, stops the connector with SIGTERM and
then rsyslogd, and prints what arrived: lines, events per tenant, order, a few lines verbatim
and the connector's /metrics figures. rsyslogd is stopped whatever happens (an error, Ctrl-C;
the kernel stops it if the demo is killed). Without rsyslogd the step fails, naming the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click

from connectors.cli.demo_support import (
    HOST,
    Arrivals,
    ConnectorRun,
    free_port,
    run_connector,
    server_process,
)
from connectors.settings import Settings
from streams.errors import StreamsError

SHOW_WIDTH = 240
# Written messages; delivered_total would lag: TCP counts as delivered only confirm_seconds later.
_METRICS = ('siem_export_syslog_messages_total{transport="tcp"}',)


@dataclass
class _Received:
    """What rsyslog wrote so far, read incrementally: this run's events, a few lines to show."""

    output: Path
    since: str
    show: int
    arrivals: Arrivals = field(default_factory=Arrivals)
    lines: int = 0  # lines of this run's events
    earlier: int = 0  # lines of events of earlier demo runs on the same broker
    unreadable: int = 0
    samples: list[str] = field(default_factory=list)
    first: list[str] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def poll(self) -> int:
        """Read what was appended since the last call; the number of this run's events seen."""
        try:
            with self.output.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:  # omfile creates it with the first message
            return 0
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            self._take(raw.decode("utf-8", "replace"))
        return self.arrivals.distinct()

    def _take(self, line: str) -> None:
        try:
            event = json.loads(_msg_of(line))
            tenant_id, event_id, timestamp = (
                str(event[k]) for k in ("tenant_id", "event_id", "timestamp")
            )
        except (ValueError, TypeError, KeyError):
            self.unreadable += 1
            return
        # The fresh consumer group starts at the beginning of the topic: events of earlier
        # demo runs on the same broker arrive too, and are not counted.
        if timestamp < self.since:
            self.earlier += 1
            return
        self.lines += 1
        self.arrivals.add(tenant_id, event_id)
        # Lines of different PRI tell more (the severity follows the action and the outcome);
        # the first lines make up the number when the run has fewer kinds.
        if len(self.first) < self.show:
            self.first.append(line)
        shown = {s.partition(">")[0] for s in self.samples}
        if len(self.samples) < self.show and line.partition(">")[0] not in shown:
            self.samples.append(line)

    def shown(self) -> list[str]:
        """Up to ``show`` lines of this run, of as many different PRI values as there were."""
        return (
            self.samples
            + [s for s in self.first if s not in self.samples][: self.show - len(self.samples)]
        )


def _msg_of(line: str) -> str:
    """MSG of an RFC 5424 message: what follows the six header fields and the structured data."""
    fields = line.split(" ", 6)  # <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID rest
    rest = fields[6] if len(fields) == 7 else ""
    if rest.startswith("-"):
        return rest[2:].removeprefix("\ufeff")
    quoted = escaped = False
    for i, ch in enumerate(rest):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = quoted
        elif ch == '"':
            quoted = not quoted
        elif ch == "]" and not quoted and not rest.startswith("[", i + 1):
            return rest[i + 2 :].removeprefix("\ufeff")
    return ""


def run_syslog_demo(
    settings: Settings, since: str, expected: dict[str, list[str]], show: int
) -> None:
    """Forward this run's events through ``siem-export run syslog`` into rsyslog (step 6)."""
    binary = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if binary is None:
        raise StreamsError(
            "rsyslogd not found (looked in PATH and /usr/sbin): the demo's syslog step needs a "
            "local rsyslog. Install the Debian package rsyslog: ./scripts/bootstrap does (as "
            "root), or apt-get install -y rsyslog"
        )
    total = sum(len(v) for v in expected.values())
    with tempfile.TemporaryDirectory(prefix="siem-export-demo-") as tmp:
        directory = Path(tmp)
        received = _Received(directory / "received.log", since, min(show, 3))
        with _rsyslogd(binary, directory, received.output) as port:
            dest_file = directory / "destinations.yaml"
            dest = {"host": HOST, "port": port, "transport": "tcp"}
            dest_file.write_text(json.dumps({"tenants": {"*": {"syslog": dest}}}))
            click.echo(
                '   demo-only destination: transport "tcp" (plain TCP: the demo has no '
                'certificates); in production use "tls", the default (RFC 5425, port 6514)'
            )
            click.echo(
                f"   siem-export run syslog --destinations {dest_file.name}  ->  "
                f"tcp://{HOST}:{port}"
            )
            run = asyncio.run(
                run_connector(
                    settings, "syslog", dest_file, lambda: received.poll() >= total, _METRICS
                )
            )
        received.poll()  # rsyslogd has stopped: its file is complete
    _report(received, expected, total, run)


@contextlib.contextmanager
def _rsyslogd(binary: str, directory: Path, output: Path) -> Iterator[int]:
    """A private rsyslogd writing ``output``, listening on 127.0.0.1; yields its port."""
    port = free_port()
    config = directory / "rsyslog.conf"
    (directory / "work").mkdir()
    config.write_text(
        f"""\
# Written by siem-export demo: a private rsyslogd on {HOST} for the syslog step.
global(workDirectory="{directory / "work"}" maxMessageSize="64k")
# Direct: the input's thread writes each message itself; no queue to lose at shutdown.
main_queue(queue.type="Direct")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="demo") {{
  action(type="omfile" file="{output}" template="raw" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="{HOST}" port="{port}" ruleset="demo")
""",
        encoding="utf-8",
    )
    check = subprocess.run(  # noqa: S603 - fixed argument list, no shell
        [binary, "-N1", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check.returncode != 0:
        raise StreamsError(
            f"rsyslogd -N1 rejects {config} (exit {check.returncode}):\n"
            f"{(check.stdout + check.stderr).strip()}"
        )
    version = re.search(r"version (\S+?),", check.stdout + check.stderr)
    name = f"rsyslogd {version.group(1)}" if version else "rsyslogd"
    argv = [binary, "-n", "-f", str(config), "-i", str(directory / "rsyslogd.pid")]
    with server_process("rsyslogd", argv, directory / "rsyslogd.log", port) as proc:
        click.echo(
            f"   {name} (pid {proc.pid}) on "
            f"tcp://{HOST}:{port}, imtcp with octet-counted framing, each message written "
            "as it arrived to a file"
        )
        yield port


def _report(
    received: _Received, expected: dict[str, list[str]], total: int, run: ConnectorRun
) -> None:
    arrivals = received.arrivals
    got = arrivals.distinct()
    earlier = f"; {received.earlier} more of earlier demo runs" if received.earlier else ""
    click.echo(
        f"   {got} of {total} events arrived at rsyslog in {received.lines} lines "
        f"({run.seconds:.1f} s, connector start included{earlier}); connector stopped with exit "
        f"code {run.code}"
    )
    for line in received.shown():
        click.echo(f"   {line if len(line) <= SHOW_WIDTH else line[: SHOW_WIDTH - 1] + '…'}")
    arrivals.conclude("syslog", expected, run, received.unreadable, "unreadable lines")
