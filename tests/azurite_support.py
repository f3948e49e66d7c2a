"""A real Azure Blob service for the storage tests: Azurite, private to the tests, on 127.0.0.1.

``Azurite(directory)`` runs Azurite's blob service (``azurite-blob``, npm package ``azurite``,
pinned and installed by ``scripts/bootstrap`` into ``~/.cache/siem-export/azurite-<version>``)
on a free loopback port, in memory (``--inMemoryPersistence``: nothing survives a stop), with
``directory`` as its working directory and log file. ``--skipApiVersionCheck`` lets a newer
SDK talk to it (the SDK sends a service version newer than Azurite knows), and
``--disableTelemetry`` keeps it off the network. ``stop()`` sends SIGTERM (Azurite closes in
well under a second), SIGKILL after 10 s; the child also gets SIGTERM if the test process dies
(PR_SET_PDEATHSIG).

The account is Azurite's built-in development account, ``devstoreaccount1``, with the key
Microsoft publishes for it (``ACCOUNT_KEY``); blob URLs are path-style:
``http://127.0.0.1:<port>/devstoreaccount1/<container>/<blob>``. ``connection_string()`` and
``account_url`` give what the writer is configured with; ``service()`` is a plain
(synchronous) SDK client to set up and inspect.

Fixtures: ``azurite`` (one server for a test module) and ``azurite_private`` (one for a test,
for tests that stop it). A test module takes them in by importing them (pytest registers a
fixture under its own name)::

    from tests.azurite_support import azurite_fixture  # noqa: F401 - the fixture "azurite"

If Azurite is missing the fixtures fail (never skip), naming the bootstrap step.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from tests.process_support import die_with_parent as _die_with_parent
from tests.process_support import free_port

HOST = "127.0.0.1"
AZURITE_VERSION = "3.35.0"  # keep in step with scripts/bootstrap
ACCOUNT_NAME = "devstoreaccount1"
# Azurite's well-known development account key, published in Azurite's README: not a secret.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class AzuriteError(RuntimeError):
    """Azurite is missing or does not come up or go down as it should."""


def azurite_dir() -> Path:
    """Where scripts/bootstrap installs the pinned Azurite."""
    return Path.home() / ".cache" / "siem-export" / f"azurite-{AZURITE_VERSION}"


def find_azurite() -> str:
    """Path of ``azurite-blob``: the bootstrap's pinned copy first, else one on PATH."""
    pinned = azurite_dir() / "node_modules" / ".bin" / "azurite-blob"
    if pinned.is_file():
        return str(pinned)
    found = shutil.which("azurite-blob")
    if found is None:
        raise AzuriteError(
            f"azurite-blob (Azurite {AZURITE_VERSION}, npm) not found in {pinned.parent} nor on "
            "PATH: the Azure storage tests need a real Azure Blob service. scripts/bootstrap "
            f'installs it (its Azurite step: npm install --prefix "{azurite_dir()}" '
            f"azurite@{AZURITE_VERSION}; Node.js and npm required)"
        )
    return found


def unique_container(label: str = "c") -> str:
    """A fresh valid container name (lowercase letters, digits and single hyphens)."""
    return f"{label[:20].lower().replace('_', '-')}-{uuid.uuid4().hex[:16]}"


class Azurite:
    """A private ``azurite-blob`` on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, directory: Path, *, start_timeout: float = 30.0) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.log = directory / "azurite.log"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def account_url(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT_NAME}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def connection_string(self, account_key: str = ACCOUNT_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={account_key};"
            f"BlobEndpoint={self.account_url};"
        )

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            "--blobHost",
            HOST,
            "--blobPort",
            str(self.port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]

    def start(self) -> None:
        if self.running:
            return
        binary = find_azurite()
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
        # Any HTTP answer (an unsigned request gets 403) means the service is up.
        url = f"{self.account_url}?comp=list"
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AzuriteError(
                    f"azurite-blob exited with {self._proc.returncode}\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our http://127.0.0.1
                    return
            except urllib.error.HTTPError:
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise AzuriteError(
                        f"azurite-blob not ready after {self.start_timeout} s "
                        f"({type(exc).__name__}: {exc})\n{self.tail()}"
                    ) from exc
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def service(self) -> BlobServiceClient:
        """A plain (synchronous) client of the account, to set up and inspect."""
        return BlobServiceClient.from_connection_string(
            self.connection_string(), retry_total=0, connection_timeout=5, read_timeout=30
        )

    def create_container(self, label: str = "c") -> str:
        name = unique_container(label)
        with self.service() as service:
            service.create_container(name)
        return name


def _start(server: Azurite) -> None:
    """Start ``server``, or fail the test (never skip it) saying why."""
    try:
        server.start()
    except AzuriteError as exc:
        problem = str(exc)
    else:
        return
    pytest.fail(problem, pytrace=False)  # outside the except: no "during handling" noise


@pytest.fixture(name="azurite", scope="module")
def azurite_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One private Azurite for a test module; tests use containers of their own."""
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    _start(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="azurite_private")
def azurite_private_fixture(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite for one test alone, which may stop it."""
    server = Azurite(tmp_path / "azurite")
    _start(server)
    try:
        yield server
    finally:
        server.stop()
