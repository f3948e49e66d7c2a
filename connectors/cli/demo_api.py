"""The REST API part of ``siem-export demo`` (step 8): the real index, an account, serve, curl.

Runs ``siem-export run index`` as its own process in a fresh consumer group (``demo_support``)
into a SQLite store in a temporary directory (``SIEM_EXPORT_STORE__URL=sqlite:///…/audit.db``),
reading the store meanwhile, per tenant in ingestion order, until every event of this demo run
is indexed; then stops it with SIGTERM and prints events per tenant and order. For the tenant
with the most events of the run it then creates a machine account with the real
``siem-export accounts create --tenant T --scope audit:read`` (the token is printed once; the
demo shows it shortened), starts ``siem-export serve`` on 127.0.0.1 and a free port with a
random cursor secret, and runs a real ``curl`` for one filtered page: the command, with the
token shortened, and curl's JSON output verbatim. Last it holds the API to what was published
for that tenant: paging in time order returns each of its events exactly once and nothing of
another tenant; paging by ingestion sequence (the pollers' mode) returns them in partition
order. The server is stopped whatever happens; without curl the step fails, naming the package.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import click

from connectors.api.params import MAX_LIMIT
from connectors.cli.demo_support import (
    HOST,
    WAIT_SECONDS,
    Arrivals,
    ConnectorRun,
    child_env,
    free_ports,
    run_connector,
    server_process,
    tail,
)
from connectors.index.errors import StoreError
from connectors.index.model import EventFilter, StoredEvent
from connectors.index.store import AuditStore, open_store
from connectors.settings import Settings
from streams.errors import StreamsError
from streams.event import parse_timestamp

PAGE = 100
"""Page size of the paging checks (the API's default)."""
HTTP_SECONDS = 10.0
CLI_SECONDS = 60.0
ACCOUNT_NAME = "siem-export-demo"
_METRICS = (
    'siem_export_delivered_total{connector="index"}',
    'siem_export_index_rows_total{result="inserted"}',
)


@dataclass
class _Indexed:
    """What the store holds of this run, read incrementally per tenant by ingestion sequence."""

    store: AuditStore
    database: Path
    since_ms: int
    tenants: list[str]
    arrivals: Arrivals = field(default_factory=Arrivals)
    categories: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    mismatched: int = 0  # rows whose stored JSON names another tenant or event id
    last_error: str | None = None
    _after: dict[str, int] = field(default_factory=dict)

    async def poll(self) -> int:
        """Read what was indexed since the last call; the number of this run's events seen."""
        if not self.database.exists():  # the index process creates it
            return 0
        where = EventFilter(start_ms=self.since_ms)
        try:
            for tenant in self.tenants:
                while rows := await self.store.query_by_sequence(
                    tenant, where, after_sequence=self._after.get(tenant), limit=1000
                ):
                    self._after[tenant] = rows[-1].sequence
                    for row in rows:
                        self._take(row)
        except StoreError as exc:  # e.g. the index process has not created its tables yet
            self.last_error = str(exc)
        return self.arrivals.distinct()

    def _take(self, row: StoredEvent) -> None:
        try:
            event = json.loads(row.body)
            category = str(event["action"]).partition(".")[0]
            mine = event["tenant_id"] == row.tenant_id and event["event_id"] == row.event_id
        except (ValueError, KeyError, TypeError):
            mine = False
        if not mine:
            self.mismatched += 1
            return
        self.arrivals.add(row.tenant_id, row.event_id)
        self.categories[row.tenant_id][category] += 1


@dataclass(frozen=True)
class _Walk:
    """The events one paging loop collected, and how many pages it took."""

    events: list[dict[str, Any]]
    pages: int
    last_empty: bool


def run_api_demo(settings: Settings, since: str, expected: dict[str, list[str]], show: int) -> None:
    """Index this run's events, then query them through ``siem-export serve`` (step 8)."""
    curl = shutil.which("curl")
    if curl is None:
        raise StreamsError(
            "curl not found in PATH: the demo's REST API step queries the API with it. Install "
            "the Debian package curl: ./scripts/bootstrap does (as root), or apt-get install -y "
            "curl"
        )
    with tempfile.TemporaryDirectory(prefix="siem-export-demo-") as tmp:
        directory = Path(tmp)
        database = directory / "audit.db"
        store_env = {"SIEM_EXPORT_STORE__URL": f"sqlite://{quote(str(database))}"}
        indexed = asyncio.run(_index(settings, since, expected, database, store_env))
        tenant = max(sorted(expected), key=lambda t: len(expected[t]))
        category = indexed.categories[tenant].most_common(1)[0][0]
        token = _create_account(settings, store_env, tenant)
        port, ops_port = free_ports(2)
        env = child_env(
            settings,
            {
                **store_env,
                "SIEM_EXPORT_API__CURSOR_SECRET": secrets.token_urlsafe(48),
                "SIEM_EXPORT_OPS__PORT": str(ops_port),
            },
        )
        argv = [sys.executable, "-m", "connectors", "serve", "--host", HOST, "--port", str(port)]
        log = directory / "serve.log"
        with server_process("siem-export serve", argv, log, port, env=env) as proc:
            click.echo(
                f"   siem-export serve --host {HOST} --port {port}  (pid {proc.pid}; "
                "SIEM_EXPORT_API__CURSOR_SECRET: a random secret of this demo)"
            )
            base = f"http://{HOST}:{port}/v1/audit-events"
            limit = min(max(show, 1), MAX_LIMIT)
            _curl(curl, base, token, since, category, limit, tenant, indexed)
            asyncio.run(_check_paging(base, token, since, tenant, expected[tenant]))
        click.echo(f"   siem-export serve stopped with exit code {proc.returncode}")
        if proc.returncode != 0:
            raise StreamsError(
                f"siem-export serve exited with {proc.returncode} on SIGTERM:\n{tail(log)}"
            )


async def _index(
    settings: Settings,
    since: str,
    expected: dict[str, list[str]],
    database: Path,
    store_env: dict[str, str],
) -> _Indexed:
    url = store_env["SIEM_EXPORT_STORE__URL"]
    click.echo(f"   SIEM_EXPORT_STORE__URL={url}  (SQLite, the embedded store; a temporary file)")
    click.echo("   siem-export run index  ->  the audit store")
    total = sum(len(v) for v in expected.values())
    store = open_store(url, pool_size=1)
    try:
        indexed = _Indexed(store, database, parse_timestamp(since), sorted(expected))

        async def done() -> bool:
            return await indexed.poll() >= total

        run = await run_connector(settings, "index", None, done, _METRICS, store_env)
        await indexed.poll()  # the connector has stopped: what it committed last
    finally:
        await store.close()
    _report_index(indexed, expected, total, run)
    return indexed


def _report_index(
    indexed: _Indexed, expected: dict[str, list[str]], total: int, run: ConnectorRun
) -> None:
    arrivals = indexed.arrivals
    click.echo(
        f"   {arrivals.distinct()} of {total} events indexed ({run.seconds:.1f} s, connector "
        f"start included; read back per tenant by ingestion sequence); connector stopped with "
        f"exit code {run.code}"
    )
    if arrivals.distinct() < total and indexed.last_error:
        click.echo(f"   last store error while waiting: {indexed.last_error}")
    arrivals.conclude(
        "index",
        expected,
        run,
        indexed.mismatched,
        "rows whose stored JSON is not theirs",
        exactly_once=True,
    )


def _create_account(settings: Settings, store_env: dict[str, str], tenant: str) -> str:
    """``siem-export accounts create`` for ``tenant``; its token (printed shortened)."""
    argv = ["accounts", "create", "--tenant", tenant, "--scope", "audit:read"]
    argv += ["--name", ACCOUNT_NAME]
    try:
        proc = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
            [sys.executable, "-m", "connectors", *argv],
            env=child_env(settings, store_env),
            capture_output=True,
            text=True,
            timeout=CLI_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StreamsError(f"siem-export accounts create took over {CLI_SECONDS:g} s") from exc
    printed = dict(line.partition(": ")[::2] for line in proc.stdout.splitlines())
    token = printed.get("token", "")
    if proc.returncode != 0 or not token:
        raise StreamsError(  # its stderr never holds the token; its stdout may
            f"siem-export accounts create exited with {proc.returncode} and no token:\n"
            f"{proc.stderr.strip()}"
        )
    click.echo(
        f"   siem-export {' '.join(argv)}  ->  account_id: {printed.get('account_id', '?')}, "
        f"token: {_shortened(token)} (printed once; shortened here)"
    )
    return token


def _shortened(token: str) -> str:
    return f"{token[:8]}…"


def _curl(
    curl: str,
    base: str,
    token: str,
    since: str,
    category: str,
    limit: int,
    tenant: str,
    indexed: _Indexed,
) -> None:
    """One filtered page with a real curl: the command, its output verbatim, and a check."""
    url = f"{base}?{urlencode({'category': category, 'start': since, 'limit': limit}, safe=':')}"
    header = "Authorization: Bearer {}"
    options = ["-sS", "--max-time", f"{HTTP_SECONDS:g}"]
    click.echo(f'   $ curl {" ".join(options)} -H "{header.format(_shortened(token))}" "{url}"')
    try:
        proc = subprocess.run(  # noqa: S603 - curl, fixed arguments
            [curl, *options, "-H", header.format(token), url],
            capture_output=True,
            text=True,
            timeout=HTTP_SECONDS + 5,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StreamsError(f"curl {url} did not finish in {HTTP_SECONDS + 5:g} s") from exc
    if proc.returncode != 0:
        raise StreamsError(f"curl {url} exited with {proc.returncode}: {proc.stderr.strip()}")
    click.echo(f"   {proc.stdout}")
    try:
        page = json.loads(proc.stdout)
        data, more = page["data"], page["next_cursor"] is not None
        tenants = {event["tenant_id"] for event in data}
        categories = {str(event["action"]).partition(".")[0] for event in data}
    except (ValueError, KeyError, TypeError) as exc:
        raise StreamsError(f"curl {url}: not a page of events: {proc.stdout[:500]}") from exc
    available = indexed.categories[tenant][category]
    rest = "next_cursor continues" if more else "no next_cursor"
    click.echo(
        f"   {len(data)} events, all of {tenant} and {category} (it has {available} {category} "
        f"events in this run: the page holds the first {min(limit, available)}; {rest})"
    )
    if (
        tenants - {tenant}
        or categories - {category}
        or len(data) != min(limit, available)
        or more != (available > limit)
    ):
        raise StreamsError(
            f"curl {url}: {len(data)} events of tenants {sorted(tenants)} and categories "
            f"{sorted(categories)}, next_cursor {'set' if more else 'null'}; expected "
            f"{min(limit, available)} of {tenant}, {category}"
        )


async def _check_paging(
    base: str, token: str, since: str, tenant: str, published: list[str]
) -> None:
    """Every page in time order, then by ingestion sequence, against what was published."""
    by_time = await _walk(base, token, {"start": since, "limit": PAGE}, len(published))
    ids = [str(event["event_id"]) for event in by_time.events]
    others = {str(event["tenant_id"]) for event in by_time.events} - {tenant}
    click.echo(
        f"   paging GET /v1/audit-events?start={since}&limit={PAGE} with that token: "
        f"{len(ids)} events in {by_time.pages} pages, {len(ids) - len(set(ids))} duplicates, "
        f"{len(others)} other tenants; {tenant} published {len(published)} in this run"
    )
    if len(ids) != len(set(ids)) or set(ids) != set(published) or others:
        raise StreamsError(
            f"api demo: paging in time order gave {len(set(ids))} distinct events of "
            f"{len(published)} ({len(ids) - len(set(ids))} duplicates, other tenants "
            f"{sorted(others)})"
        )
    params: dict[str, str | int] = {"start": since, "limit": PAGE, "order": "ingestion"}
    by_sequence = await _walk(base, token, params, len(published))
    in_order = [str(event["event_id"]) for event in by_sequence.events] == published
    caught_up = ", the last one empty (caught up)" if by_sequence.last_empty else ""
    click.echo(
        f"   paging with order=ingestion (for pollers): {len(by_sequence.events)} events in "
        f"{by_sequence.pages} pages{caught_up}; "
        f"{'in partition order' if in_order else 'NOT in partition order'}"
    )
    if not in_order:
        raise StreamsError(
            f"api demo: order=ingestion returned {tenant}'s events in another order (or other "
            "events) than the topic holds them"
        )


async def _walk(base: str, token: str, params: dict[str, str | int], expected: int) -> _Walk:
    """Follow ``next_cursor`` until the last page (time order) or an empty one (ingestion
    order), honouring 429 Retry-After; StreamsError on any other answer or past the limits."""
    headers = {"Authorization": f"Bearer {token}"}
    events: list[dict[str, Any]] = []
    pages = 0
    cursor: str | None = None
    deadline = time.monotonic() + WAIT_SECONDS
    most_pages = expected // int(params["limit"]) + 3
    timeout = aiohttp.ClientTimeout(total=HTTP_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while pages < most_pages and time.monotonic() < deadline:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            try:
                async with session.get(base, params=query, headers=headers) as resp:
                    text = await resp.text()
                    if resp.status == 429:
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        continue
                    if resp.status != 200:
                        raise StreamsError(f"GET {resp.url}: HTTP {resp.status}: {text[:500]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise StreamsError(f"GET {base}: {exc or type(exc).__name__}") from exc
            try:
                page = json.loads(text)
                events += page["data"]
                cursor = page["next_cursor"]
            except (ValueError, KeyError, TypeError) as exc:
                raise StreamsError(f"GET {base}: not a page of events: {text[:500]}") from exc
            pages += 1
            if cursor is None or (params.get("order") == "ingestion" and not page["data"]):
                return _Walk(events, pages, not page["data"])
    raise StreamsError(
        f"GET {base} with {params}: paging did not end after {pages} pages "
        f"({len(events)} events; at most {expected} expected)"
    )
