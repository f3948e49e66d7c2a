"""Google Cloud Storage servers for the storage tests, private to the tests, on 127.0.0.1 only.

``GcsEmulator(directory)`` runs ``gcp-storage-emulator`` (the PyPI package of that name, its
console script beside the venv's python) on a free loopback port with in-memory storage, its
log in ``directory``. It speaks the JSON API: multipart uploads (checking an ``md5Hash`` given
in the resource), resumable sessions fed chunk by chunk with ``Content-Range`` (308 and a
``Range`` header until the last byte, status queries with ``bytes */TOTAL``), downloads and
object resources. It takes no credentials at all: the writer under test gets
``api_root=emulator.endpoint`` (``http://``), over which it never sends a token, so no Google
account, key file or metadata server is involved. What the emulator does not do: it ignores
``kmsKeyName`` and ``X-Goog-Hash`` on uploads, answers 501 to cancelling a session (DELETE),
handles one request at a time and closes every connection (HTTP/1.0). ``stop()`` sends SIGINT.
The helpers (``create_bucket``, ``resource``, ``download``, ``names``) use the JSON API
directly through urllib, independent of the code under test.

``RecordingGcs`` is an in-process aiohttp server standing in for Cloud Storage where the
emulator cannot show something: it records every request (method, path, query, headers, body
size) and implements just enough of the two upload protocols, with faults on demand: a status
to answer once for the chunk starting at a given offset, or keeping only part of one.

Fixtures: ``gcs_emulator`` (one emulator for a test module; tests use buckets of their own),
``gcs_emulator_private`` (one for a test alone, which may stop it), ``recording_gcs``. A test
module takes them in by importing them (pytest registers a fixture under its own name)::

    from tests.gcs_support import gcs_emulator_fixture  # noqa: F401 - the fixture "gcs_emulator"

If the emulator is missing the fixtures fail (never skip), saying how to install it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from tests.process_support import die_with_parent as _die_with_parent
from tests.process_support import free_port

HOST = "127.0.0.1"
EMULATOR_PIN = "gcp-storage-emulator==2026.7.19"


class GcsServerError(RuntimeError):
    """The emulator is missing or does not come up or go down as it should."""


def find_emulator() -> str:
    """Path of the ``gcp-storage-emulator`` script (the venv's bin first: pip installs it)."""
    beside = Path(sys.executable).parent / "gcp-storage-emulator"
    if beside.is_file():
        return str(beside)
    found = shutil.which("gcp-storage-emulator")
    if found is None:
        raise GcsServerError(
            "gcp-storage-emulator not found: the GCS tests need it. Install it with "
            f"`.venv/bin/pip install -c constraints.txt {EMULATOR_PIN}` (it is in the dev "
            "extras: `.venv/bin/pip install -c constraints.txt -e '.[dev]'`, which "
            "scripts/bootstrap runs)"
        )
    return found


def unique_bucket(label: str = "b") -> str:
    """A fresh valid bucket name (lowercase, 3-63 characters)."""
    return f"{label[:20].lower().replace('_', '-')}-{uuid.uuid4().hex[:16]}"


class GcsEmulator:
    """A private ``gcp-storage-emulator`` on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, directory: Path, *, start_timeout: float = 30.0) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.port = free_port()
        self.log = directory / "emulator.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The writer's ``api_root``."""
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        command = [
            find_emulator(),
            "start",
            f"--host={HOST}",
            f"--port={self.port}",
            "--in-memory",
        ]
        # The emulator's own STORAGE_BASE would be the working directory: keep it private.
        env = {**os.environ, "STORAGE_BASE": str(self.directory)}
        env.pop("STORAGE_EMULATOR_HOST", None)
        with self.log.open("ab") as log:
            log.write(b"--- start ---\n")
            log.flush()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the only way to set PR_SET_PDEATHSIG
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise GcsServerError(
                    f"gcp-storage-emulator exited with {self._proc.returncode}\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/", timeout=2) as reply:  # noqa: S310
                    if reply.read() == b"OK":
                        return
            except OSError as exc:  # not listening yet
                if time.monotonic() > deadline:
                    raise GcsServerError(
                        f"gcp-storage-emulator not ready after {self.start_timeout} s "
                        f"({type(exc).__name__}: {exc})\n{self.tail()}"
                    ) from exc
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # its run loop stops the server on KeyboardInterrupt
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def request_lines(self, needle: str) -> list[str]:
        """The emulator's access-log lines containing ``needle`` (``"PUT /upload/…" 308 -``)."""
        return [
            line for line in self.log.read_text(errors="replace").splitlines() if needle in line
        ]

    # --- the JSON API, straight -------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - http to the loopback emulator
            self.endpoint + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def create_bucket(self, label: str = "b") -> str:
        name = unique_bucket(label)
        status, body = self._call("POST", "/storage/v1/b?project=siem-export-test", {"name": name})
        if status != 200:
            raise GcsServerError(f"creating bucket {name}: HTTP {status} {body[:200]!r}")
        return name

    def resource(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The object resource of ``key``, or None if there is no such object."""
        status, body = self._call("GET", f"/storage/v1/b/{bucket}/o/{quote(key, safe='')}")
        if status == 404:
            return None
        if status != 200:
            raise GcsServerError(f"reading {bucket}/{key}: HTTP {status} {body[:200]!r}")
        resource: dict[str, Any] = json.loads(body)
        return resource

    def download(self, bucket: str, key: str) -> bytes:
        path = f"/download/storage/v1/b/{bucket}/o/{quote(key, safe='')}?alt=media"
        status, body = self._call("GET", path)
        if status != 200:
            raise GcsServerError(f"downloading {bucket}/{key}: HTTP {status}")
        return body

    def names(self, bucket: str) -> list[str]:
        status, body = self._call("GET", f"/storage/v1/b/{bucket}/o")
        if status != 200:
            raise GcsServerError(f"listing {bucket}: HTTP {status} {body[:200]!r}")
        return sorted(item["name"] for item in json.loads(body).get("items") or [])


# --- an in-process stand-in that records what it was sent -------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    size: int


@dataclass
class _Session:
    resource: dict[str, Any]
    total: int
    data: bytearray = field(default_factory=bytearray)


class RecordingGcs:
    """Just enough of the JSON API upload protocols, recording every request.

    ``fail_once[offset] = status`` answers ``status`` to the first chunk PUT starting at
    ``offset``; ``keep_short[offset] = n`` keeps only ``n`` bytes of the first chunk PUT
    starting there (a server may persist less than it was sent); ``lose_answer`` holds offsets
    whose first chunk PUT is applied but answered 503 (the answer lost on the way back).
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.objects: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.fail_once: dict[int, int] = {}
        self.keep_short: dict[int, int] = {}
        self.part_types: list[str] = []
        self.lose_answer: set[int] = set()
        self._sessions: dict[str, _Session] = {}
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.endpoint = f"http://{HOST}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def of(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                len(body),
            )
        )
        upload_type = request.query.get("uploadType")
        if request.method == "POST" and upload_type == "multipart":
            return self._multipart(request, body)
        if request.method == "POST" and upload_type == "resumable":
            session = uuid.uuid4().hex
            resource = json.loads(body)
            total = int(request.headers["X-Upload-Content-Length"])
            self._sessions[session] = _Session(resource, total)
            location = f"{self.endpoint}{request.path}?uploadType=resumable&upload_id={session}"
            return web.Response(status=200, headers={"Location": location})
        if request.method == "PUT" and "upload_id" in request.query:
            return self._chunk(request, body)
        if request.method == "DELETE" and "upload_id" in request.query:
            self._sessions.pop(request.query["upload_id"], None)
            return web.Response(status=499)
        return web.Response(status=501)

    def _multipart(self, request: web.Request, body: bytes) -> web.Response:
        head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
        parts: Any = BytesParser().parsebytes(head + body).get_payload()
        assert isinstance(parts, list) and len(parts) == 2, "multipart/related of 2 parts"
        resource = json.loads(parts[0].get_payload(decode=True))
        self.part_types.append(parts[1].get_content_type())
        return self._store(resource, parts[1].get_payload(decode=True))

    def _chunk(self, request: web.Request, body: bytes) -> web.Response:
        session = self._sessions.get(request.query["upload_id"])
        if session is None:
            return web.json_response({"error": {"code": 404, "message": "gone"}}, status=404)
        spec = request.headers["Content-Range"].removeprefix("bytes ")
        span, _, total = spec.partition("/")
        if span != "*":
            start = int(span.partition("-")[0])
            if start in self.fail_once:
                return web.Response(status=self.fail_once.pop(start))
            if start != len(session.data):
                return web.Response(status=400, text="out of order")
            if start in self.keep_short:
                body = body[: self.keep_short.pop(start)]
            session.data += body
            lost = start in self.lose_answer
            self.lose_answer.discard(start)
        else:
            lost = False
        if len(session.data) == session.total:
            reply = self._store(session.resource, bytes(session.data))
            return web.Response(status=503) if lost else reply
        if lost:
            return web.Response(status=503)
        headers = {"Range": f"bytes=0-{len(session.data) - 1}"} if session.data else {}
        return web.Response(status=308, headers=headers)

    def _store(self, resource: dict[str, Any], data: bytes) -> web.Response:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        stored = {**resource, "size": str(len(data)), "md5Hash": md5}
        self.objects[resource["name"]] = (stored, data)
        return web.json_response(stored)


# --- fixtures ---------------------------------------------------------------------------------


def _fail(exc: GcsServerError) -> None:
    pytest.fail(str(exc), pytrace=False)


@pytest.fixture(name="gcs_emulator", scope="module")
def gcs_emulator_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """One private emulator for a test module; tests use buckets of their own."""
    server = GcsEmulator(tmp_path_factory.mktemp("gcs"))
    try:
        server.start()
    except GcsServerError as exc:
        _fail(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="gcs_emulator_private")
def gcs_emulator_private_fixture(tmp_path: Path) -> Iterator[GcsEmulator]:
    """An emulator for one test alone, which may stop it."""
    server = GcsEmulator(tmp_path / "gcs")
    try:
        server.start()
    except GcsServerError as exc:
        _fail(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="recording_gcs")
async def recording_gcs_fixture() -> AsyncIterator[RecordingGcs]:
    server = RecordingGcs()
    await server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            await server.stop()
