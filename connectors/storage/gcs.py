"""Writes finished export files to Google Cloud Storage, whole or not at all.

Who calls it: the storage sink, once per closed file, through ``GcsWriter.put``; it acknowledges
the file's events only after ``put`` has returned. One ``GcsWriter`` serves one destination
(``GcsTarget``) and keeps one HTTP connection pool and one access token for its whole life;
``close()`` releases them.

What ``put`` guarantees when it returns:

1. The object exists under ``key`` with exactly ``size`` bytes whose SHA-256 is ``sha256_hex``
   (checked here over the bytes actually read, before anything is made visible), the custom
   metadata, content type and content encoding given and, with ``kms_key_name``, encrypted
   with that Cloud KMS key: the key goes as ``kmsKeyName`` on every upload request, so Cloud
   Storage refuses the upload (400 or 403, nothing stored) rather than fall back to another
   key. Without it the bucket's default key, or Google-managed encryption, applies.
2. Cloud Storage checked the bytes it stored against our MD5 of the whole content: a small
   upload names it in the object resource (``md5Hash``), a resumable upload sends it with the
   final chunk (``X-Goog-Hash: md5=…``); a mismatch is refused with 400 instead of stored. The
   ``md5Hash`` and ``size`` the server answers are compared too, for servers that ignore those
   fields (the emulator ignores ``X-Goog-Hash``): a mismatch there raises, and the replay that
   follows overwrites the object.
3. Nobody sees a partial object. Files below ``resumable_threshold`` go in one multipart
   upload (resource and bytes in one request), which Cloud Storage applies atomically. Larger
   ones go through a resumable upload session, fed ``chunk_size`` bytes at a time; Cloud
   Storage creates the object only when the last byte of the declared size has arrived. On
   any failure before that (an error, the ``timeout``, a cancelled task, ``read_part``
   raising, a digest mismatch) the session is cancelled, best effort: a session that cannot be
   cancelled stays invisible and expires after a week.
4. Writing the same key again replaces the object whole: a replay after a crash overwrites
   instead of adding a copy, and a reader sees the old or the new content, never a mix.

A resumable upload survives a bad moment on one chunk: after a 408, 429, 5xx, a lost
connection or a request that timed out, it asks the session how many bytes it holds (a status
query) and sends the rest from there, up to ``CHUNK_ATTEMPTS`` times per chunk. If the final
chunk's answer was lost, the status query finds the object finished and ``put`` returns.

Memory: at most two chunks (the one being sent and the next one, read ahead in a worker thread
through ``read_part(offset, size)``); a small upload holds the whole (small) file once.

When ``put`` fails it raises ``StorageError`` (provider ``gcs``) with ``permanent`` set when
retrying cannot help until someone changes the configuration (400: an invalid request or an
unusable KMS key; 401, 403: credentials refused or no permission; 404: no such bucket; a
credentials file that cannot be used) and cleared for what may pass (408, 429, 5xx, timeouts,
refused or lost connections, an upload session that expired, a body damaged in transit). An
exception raised by ``read_part`` comes out unchanged, after the session was cancelled, and so
does the ``ValueError`` raised when the bytes read do not match ``size`` and ``sha256_hex``.
Messages name the operation, the HTTP status and Google's error reason and message, never a
token, a credential or an upload session URI (whoever holds one may write into the session).

Credentials: Google's standard chain, as gcloud-aio-auth implements it: ``credentials_file``
if set, else ``GOOGLE_APPLICATION_CREDENTIALS``, else gcloud's application default
credentials file, else the metadata server (GCE, GKE workload identity, Cloud Run). A file
named by the first two is read and checked here, so a damaged one fails permanently instead of
silently falling through to the metadata server. The access token is fetched on first use and
refreshed by gcloud-aio-auth before it expires.

Endpoint: ``api_root`` (scheme, host, port), else ``STORAGE_EMULATOR_HOST`` (what every Google
client honours), else ``https://storage.googleapis.com``. Tokens are only ever sent over
https: with an ``http://`` root (an emulator, a test server) requests carry no credentials at
all, which is how the tests talk to ``gcp-storage-emulator``; a ``credentials_file`` with an
``http://`` root is refused. Chunks go to the session URI only if it is on the same origin as
the root.

Why not gcloud-aio-storage's ``Storage.upload``: its resumable path sends the whole stream in
one PUT (no chunks, so a file would have to be whole in memory or behind a seekable file
object), passes object resource keys through a Dash-Case formatter that lower-cases camelCase
names (``kmsKeyName`` becomes ``kmskeyname``), ignores the timeout when it opens a session, and
with a custom ``api_root`` drops both the token and TLS verification unless told otherwise. The
two upload protocols are small, so they are spoken here directly over aiohttp, and
gcloud-aio-auth supplies tokens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from gcloud.aio.auth import Token
from multidict import CIMultiDictProxy

from connectors.storage.writer import StorageError

_log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB
CHUNK_ALIGNMENT = 256 * KIB  # every chunk but the last must be a multiple of this
CHUNK_ATTEMPTS = 3
DEFAULT_API_ROOT = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
PROVIDER = "gcs"

# Statuses that say the configuration is wrong; the rest (408, 429, 5xx…) may pass.
_PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 411, 413})
# The server's phrase for a body whose digest differs from the one we announced (a 400).
_DIGEST_MISMATCH = "doesn't match calculated"
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class GcsTarget:
    """Where and how to write: plain settings, filled from the destination's configuration.

    ``kms_key_name`` (``projects/…/locations/…/keyRings/…/cryptoKeys/…``) encrypts every object
    with that customer-managed key. ``credentials_file`` is a service account (or other
    application credentials) JSON file; None means the process's default credentials.
    ``api_root`` is another endpoint (``http://127.0.0.1:PORT`` for an emulator); None means
    ``STORAGE_EMULATOR_HOST`` or Google's.
    """

    bucket: str
    kms_key_name: str | None = None
    credentials_file: Path | None = None
    api_root: str | None = None


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class GcsWriter:
    """Puts whole objects into one bucket (see the module docstring for the guarantees).

    ``timeout`` bounds one ``put`` from its first request to its last, chunk retries included;
    cancelling a session after a failure gets its own, shorter bound. ``chunk_size`` must be a
    multiple of 256 KiB (Cloud Storage's rule for every chunk but the last).
    """

    def __init__(
        self,
        target: GcsTarget,
        *,
        chunk_size: int = 8 * MIB,
        resumable_threshold: int = 16 * MIB,
        timeout: float = 300.0,
    ) -> None:
        if chunk_size < CHUNK_ALIGNMENT or chunk_size % CHUNK_ALIGNMENT:
            raise ValueError(f"chunk_size must be a positive multiple of {CHUNK_ALIGNMENT}")
        if resumable_threshold < 1:
            raise ValueError("resumable_threshold must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self.api_root = _api_root(target.api_root)
        self._secure = self.api_root.startswith("https://")
        if target.credentials_file is not None and not self._secure:
            raise ValueError(
                "credentials_file needs an https:// api_root: tokens are never sent over http"
            )
        self._chunk_size = chunk_size
        self._threshold = resumable_threshold
        self._timeout = timeout
        self._cancel_timeout = min(timeout, 10.0)
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        self._token: Token | None = None
        self._closed = False

    async def put(
        self,
        key: str,
        size: int,
        read_part: Callable[[int, int], bytes],
        metadata: Mapping[str, str],
        content_type: str,
        content_encoding: str | None,
        sha256_hex: str,
    ) -> None:
        """Write ``size`` bytes, read through ``read_part(offset, size)``, as object ``key``."""
        if not key or size < 0:
            raise ValueError("put needs a key and a size >= 0")
        resource: dict[str, Any] = {
            "name": key,
            "contentType": content_type,
            "metadata": dict(metadata),
        }
        if content_encoding is not None:
            resource["contentEncoding"] = content_encoding
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                await self._open(key)
                if size < self._threshold:
                    await self._put_simple(key, size, read_part, resource, sha256_hex)
                else:
                    await self._put_resumable(key, size, read_part, resource, sha256_hex)
        except TimeoutError as exc:
            if deadline.expired():
                raise self._fail(key, f"gave up after {self._timeout:g}s", "Timeout") from exc
            raise

    async def close(self) -> None:
        """Close the connection pool; the writer cannot be used afterwards."""
        async with self._lock:
            self._closed = True
            http, token = self._http, self._token
            self._http = self._token = None
        refreshing = token.acquiring if token is not None else None
        if refreshing is not None and not refreshing.done():
            refreshing.cancel()  # a background refresh would outlive its connection pool
        if http is not None:
            await http.close()

    # Step 0 of both paths: one connection pool and one token per writer, made on first use.
    async def _open(self, key: str) -> None:
        async with self._lock:
            if self._closed:
                raise RuntimeError("GcsWriter is closed")
            if self._http is not None:
                return
            service_file = _credentials(self.target, key) if self._secure else None
            http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=min(self._timeout, 10.0),
                    sock_read=min(self._timeout, 60.0),
                ),
                auto_decompress=False,
            )
            if self._secure:
                try:
                    # gcloud-aio-auth's hints name requests' Session (its REST twin shares
                    # the code); the aio build takes an aiohttp ClientSession.
                    self._token = Token(
                        service_file=service_file,
                        session=http,  # type: ignore[arg-type]
                        scopes=SCOPES,
                    )
                except Exception as exc:  # unknown credential type, fields missing
                    await http.close()
                    raise self._fail(
                        key,
                        f"credentials unusable: {type(exc).__name__}",
                        "InvalidCredentials",
                        permanent=True,
                    ) from None
            self._http = http

    # Small files: one multipart upload, atomic on the server.
    async def _put_simple(
        self,
        key: str,
        size: int,
        read_part: Callable[[int, int], bytes],
        resource: dict[str, Any],
        sha256_hex: str,
    ) -> None:
        """1. read the whole file and check its size and SHA-256; 2. send the object resource
        (with our MD5) and the bytes in one multipart/related request; 3. compare the stored
        size and MD5 with ours."""
        # Step 1. Read the whole file and check it is what the caller described.
        data = await _read(read_part, 0, size) if size else b""
        _check_whole(key, size, len(data), hashlib.sha256(data).hexdigest(), sha256_hex)
        md5 = _b64(hashlib.md5(data, usedforsecurity=False).digest())
        # Step 2. Send resource and bytes together; the server checks md5Hash before storing.
        body = aiohttp.MultipartWriter("related", boundary=_boundary(data))
        body.append_json({**resource, "md5Hash": md5})
        # A file object, not bytes: aiohttp streams it (and warns about large raw bytes).
        body.append(io.BytesIO(data), {"Content-Type": resource["contentType"]})
        reply = await self._send(
            "MultipartUpload",
            key,
            "POST",
            self._upload_url(),
            params={"uploadType": "multipart", **self._kms()},
            headers=await self._auth(key),
            data=body,
        )
        if reply.status not in (200, 201):
            raise self._http_error("MultipartUpload", key, reply)
        # Step 3. The server's account of what it stored must match ours.
        self._check_stored(key, _json(reply), size, md5)

    # Large files: a resumable upload session, made visible by its last byte only.
    async def _put_resumable(
        self,
        key: str,
        size: int,
        read_part: Callable[[int, int], bytes],
        resource: dict[str, Any],
        sha256_hex: str,
    ) -> None:
        """1. open a session (resource, size and KMS key) while the first chunk is read;
        2. send the chunks in order, each PUT naming its byte range and the total, resuming a
        chunk after a transient failure; 3. before the last chunk, check the whole SHA-256
        and send the whole MD5 with it; 4. compare the finished object with what was sent.
        Any failure before the last chunk is accepted cancels the session."""
        chunk = self._chunk_size
        count = math.ceil(size / chunk)
        session: str | None = None
        pending: asyncio.Task[bytes] | None = None
        finished = False

        def read_ahead(index: int) -> asyncio.Task[bytes]:
            offset = index * chunk
            return asyncio.create_task(_read(read_part, offset, min(chunk, size - offset)))

        try:
            # Step 1. Open the session (it carries the resource and the KMS key) while the
            # first chunk is read.
            reading = pending = read_ahead(0)
            session = await self._open_session(key, size, resource)
            # Step 2. Send the chunks in order, reading the next one while this one travels.
            whole_sha256 = hashlib.sha256()
            whole_md5 = hashlib.md5(usedforsecurity=False)
            stored: dict[str, Any] | None = None
            for index in range(count):
                data = await reading
                pending = None
                if index + 1 < count:
                    reading = pending = read_ahead(index + 1)
                start = index * chunk
                expected = min(chunk, size - start)
                if len(data) != expected:
                    raise ValueError(
                        f"read_part gave {len(data)} bytes for chunk {index + 1} of {key!r}, "
                        f"expected {expected}"
                    )
                whole_sha256.update(data)
                whole_md5.update(data)
                extra: dict[str, str] = {}
                if index + 1 == count:
                    # Step 3. Before the last chunk commits the object, the bytes must be the
                    # ones described; the server then checks them against our MD5.
                    _check_whole(key, size, size, whole_sha256.hexdigest(), sha256_hex)
                    extra["X-Goog-Hash"] = f"md5={_b64(whole_md5.digest())}"
                stored = await self._send_chunk(key, session, start, data, size, extra)
            finished = True
            # Step 4. The last chunk's answer is the object: it must match what was sent.
            if stored is None:
                raise self._fail(key, "the upload session never reported the object", "Lost")
            self._check_stored(key, stored, size, _b64(whole_md5.digest()))
        except BaseException:
            if pending is not None:
                # The read runs in a thread that cannot be cancelled: let it finish, so that
                # read_part is no longer running once put has returned.
                with contextlib.suppress(Exception):
                    await pending
            if session is not None and not finished:
                await self._cancel(key, session)
            raise

    async def _open_session(self, key: str, size: int, resource: dict[str, Any]) -> str:
        headers = {
            **await self._auth(key),
            "X-Upload-Content-Type": resource["contentType"],
            "X-Upload-Content-Length": str(size),
        }
        reply = await self._send(
            "StartResumableUpload",
            key,
            "POST",
            self._upload_url(),
            params={"uploadType": "resumable", **self._kms()},
            headers=headers,
            json_body=resource,
        )
        if reply.status not in (200, 201):
            raise self._http_error("StartResumableUpload", key, reply)
        location = reply.headers.get("Location", "")
        if not location:
            raise self._fail(key, "StartResumableUpload answered without a session URI", "Lost")
        if _origin(location) != _origin(self.api_root):
            # Never follow a session elsewhere: the bytes (and a token) would go with it.
            raise self._fail(
                key,
                f"StartResumableUpload named a session on {_origin(location)}, "
                f"not on {_origin(self.api_root)}",
                "ForeignSession",
                permanent=True,
            )
        return location

    async def _send_chunk(
        self, key: str, session: str, start: int, data: bytes, total: int, extra: dict[str, str]
    ) -> dict[str, Any] | None:
        """Have the session hold bytes ``start`` to ``start + len(data)``: the object resource
        when that completed the upload, else None. ``extra`` headers go with every request
        that carries bytes of this chunk."""
        end = start + len(data)
        position = start
        for attempt in range(1, CHUNK_ATTEMPTS + 1):
            try:
                state = await self._put_bytes(
                    key, session, position, data[position - start :], total, extra
                )
            except StorageError as exc:
                if exc.permanent or attempt == CHUNK_ATTEMPTS:
                    raise
                _log.info(
                    "Resuming an upload after a failed chunk",
                    extra={"bucket": self.target.bucket, "key": key, "reason": str(exc)},
                )
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
                state = await self._session_state(key, session, total)
            if isinstance(state, dict):
                return state
            if state >= end:
                return None
            if state < start:
                raise self._fail(
                    key, f"the upload session lost bytes before offset {start}", "Lost"
                )
            # The server kept only part of what was sent (it may): send the rest.
            position = state
        raise self._fail(
            key, f"chunk at offset {start} not accepted after {CHUNK_ATTEMPTS} attempts", "Lost"
        )

    async def _put_bytes(
        self,
        key: str,
        session: str,
        start: int,
        data: bytes,
        total: int,
        extra: Mapping[str, str],
    ) -> dict[str, Any] | int:
        """One PUT of bytes into the session: the object resource, or how many bytes the
        session now holds."""
        headers = {
            **await self._auth(key),
            **extra,
            "Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}",
        }
        reply = await self._send(
            "UploadChunk", key, "PUT", session, headers=headers, data=io.BytesIO(data)
        )
        return self._session_reply("UploadChunk", key, reply)

    async def _session_state(self, key: str, session: str, total: int) -> dict[str, Any] | int:
        """Ask the session what it holds (a status query): the object resource if the upload
        completed, else how many bytes it has."""
        headers = {**await self._auth(key), "Content-Range": f"bytes */{total}"}
        reply = await self._send("QueryUpload", key, "PUT", session, headers=headers, data=b"")
        return self._session_reply("QueryUpload", key, reply)

    def _session_reply(self, operation: str, key: str, reply: _Reply) -> dict[str, Any] | int:
        if reply.status in (200, 201):
            return _json(reply)
        if reply.status == 308:  # Resume Incomplete: "Range: bytes=0-LAST", absent when none
            held = reply.headers.get("Range", "")
            last = held.rpartition("-")[2]
            return int(last) + 1 if held.startswith("bytes=0-") and last.isdigit() else 0
        if reply.status in (404, 410, 499):
            # The session expired or was cancelled: a new put starts a new one.
            raise self._http_error(operation, key, reply, permanent=False)
        raise self._http_error(operation, key, reply)

    async def _cancel(self, key: str, session: str) -> None:
        """Drop an unfinished session, best effort and bounded in time."""
        try:
            async with asyncio.timeout(self._cancel_timeout):
                reply = await self._send(
                    "CancelUpload", key, "DELETE", session, headers=await self._auth(key)
                )
        except (StorageError, TimeoutError) as exc:
            _log.warning(
                "Could not cancel an unfinished upload session; it stays invisible and expires "
                "after a week",
                extra={"bucket": self.target.bucket, "key": key, "reason": str(exc)},
            )
            return
        # 499 is Cloud Storage's answer to a cancelled session; 404/410: already gone.
        if reply.status not in (200, 204, 404, 410, 499):
            _log.info(
                "The server did not cancel an unfinished upload session; it stays invisible",
                extra={"bucket": self.target.bucket, "key": key, "status": reply.status},
            )

    async def _auth(self, key: str) -> dict[str, str]:
        """The Authorization header (none over http), fetching or refreshing the token."""
        if self._token is None:
            return {}
        try:
            token = await self._token.get()
        except aiohttp.ClientResponseError as exc:
            # The token endpoint refused the credentials (its message is not passed on).
            raise self._fail(
                key,
                f"GetAccessToken failed: HTTP {exc.status}",
                "InvalidCredentials",
                permanent=exc.status in (400, 401, 403, 404),
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._fail(
                key, f"GetAccessToken failed: {_describe(exc)}", "TokenUnavailable"
            ) from exc
        except Exception as exc:  # a malformed key or token answer
            raise self._fail(
                key, f"GetAccessToken failed: {type(exc).__name__}", "InvalidCredentials", True
            ) from None
        if not token:
            raise self._fail(key, "GetAccessToken returned no token", "InvalidCredentials", True)
        return {"Authorization": f"Bearer {token}"}

    async def _send(
        self,
        operation: str,
        key: str,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        json_body: Any = None,
    ) -> _Reply:
        """One HTTP request, its whole answer read; a transport failure is a StorageError."""
        assert self._http is not None  # noqa: S101 - _open ran first
        try:
            async with self._http.request(
                method,
                url,
                params=params,
                headers=headers,
                data=data,
                json=json_body,
                allow_redirects=False,  # 308 is "Resume Incomplete" here, not a redirect
            ) as response:
                body = await response.read()
                return _Reply(response.status, response.headers, body)
        except aiohttp.InvalidURL:
            raise self._fail(key, f"{operation} failed: invalid URL", "InvalidURL", True) from None
        except (aiohttp.ClientError, OSError) as exc:
            # TimeoutError is an OSError. Anything else is a bug, not the storage: it goes on.
            raise self._fail(
                key, f"{operation} failed: {_describe(exc)}", type(exc).__name__
            ) from exc

    def _upload_url(self) -> str:
        return f"{self.api_root}/upload/storage/v1/b/{quote(self.target.bucket, safe='')}/o"

    def _kms(self) -> dict[str, str]:
        name = self.target.kms_key_name
        return {"kmsKeyName": name} if name is not None else {}

    def _check_stored(self, key: str, stored: dict[str, Any], size: int, md5: str) -> None:
        problems = []
        if str(stored.get("size")) != str(size):
            problems.append(f"size {stored.get('size')!r}, sent {size}")
        if stored.get("md5Hash") not in (None, md5):
            problems.append(f"md5Hash {stored.get('md5Hash')!r}, sent {md5!r}")
        if problems:
            raise self._fail(
                key,
                "the stored object differs from what was sent (" + "; ".join(problems) + "); "
                "the next put overwrites it",
                "DigestMismatch",
            )

    def _http_error(
        self, operation: str, key: str, reply: _Reply, *, permanent: bool | None = None
    ) -> StorageError:
        reason, message = _google_error(reply.body)
        if permanent is None:
            digest = reply.status == 400 and _DIGEST_MISMATCH in message
            permanent = reply.status in _PERMANENT_STATUSES and not digest
            if reply.status == 404 and not message:
                message = "(no such bucket)"
        text = f"{operation} failed: HTTP {reply.status}"
        if reason:
            text += f" {reason}"
        if message:
            text += f" {message}"
        return self._fail(key, text, reason or f"HTTP{reply.status}", permanent)

    def _fail(self, key: str, message: str, code: str, permanent: bool = False) -> StorageError:
        return StorageError(
            message,
            bucket=self.target.bucket,
            key=key,
            permanent=permanent,
            code=code,
            provider=PROVIDER,
        )


def _api_root(configured: str | None) -> str:
    """scheme://host[:port] of the JSON API: the configured one, the emulator's, or Google's."""
    root = configured or os.environ.get("STORAGE_EMULATOR_HOST") or DEFAULT_API_ROOT
    if "://" not in root:
        root = f"http://{root}"  # STORAGE_EMULATOR_HOST is often given as host:port
    parts = urlsplit(root)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("api_root has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("api_root must be an http:// or https:// URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("api_root must not carry credentials, a query or a fragment")
    return root.rstrip("/")


def _credentials(target: GcsTarget, key: str) -> io.StringIO | None:
    """The credentials file named by the target or GOOGLE_APPLICATION_CREDENTIALS, checked;
    None lets gcloud-aio-auth look further (gcloud's file, then the metadata server)."""
    named = target.credentials_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not named:
        return None
    path = Path(named)
    problem = None
    try:
        text = path.read_text(encoding="utf-8")
        info = json.loads(text)
    except (OSError, ValueError) as exc:  # messages of neither quote the content
        problem = type(exc).__name__
    else:
        if not isinstance(info, dict) or not isinstance(info.get("type"), str):
            problem = "not a JSON object with a 'type'"
    if problem is not None:
        raise StorageError(
            f"credentials file {path} is unusable: {problem}",
            bucket=target.bucket,
            key=key,
            permanent=True,
            code="InvalidCredentials",
            provider=PROVIDER,
        )
    return io.StringIO(text)


async def _read(read_part: Callable[[int, int], bytes], offset: int, size: int) -> bytes:
    return await asyncio.to_thread(read_part, offset, size)


def _check_whole(key: str, size: int, got: int, digest: str, expected: str) -> None:
    if got != size:
        raise ValueError(f"read_part gave {got} bytes for {key!r}, expected {size}")
    if digest != expected.lower():
        raise ValueError(f"content of {key!r} has SHA-256 {digest}, expected {expected}")


def _boundary(data: bytes) -> str:
    while True:
        boundary = "siem-export-" + secrets.token_hex(16)
        if boundary.encode() not in data:
            return boundary


def _json(reply: _Reply) -> dict[str, Any]:
    try:
        value = json.loads(reply.body or b"{}")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {}


def _google_error(body: bytes) -> tuple[str, str]:
    """(reason, message) of a JSON API error body, or empty strings."""
    try:
        error = json.loads(body).get("error", {})
    except (ValueError, AttributeError):
        return "", body[:_MAX_MESSAGE].decode("utf-8", "replace").strip() if body else ""
    if not isinstance(error, dict):
        return "", str(error)[:_MAX_MESSAGE]
    errors = error.get("errors") or [{}]
    reason = errors[0].get("reason", "") if isinstance(errors[0], dict) else ""
    return str(reason), str(error.get("message", ""))[:_MAX_MESSAGE]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:_MAX_MESSAGE]}" if text else type(exc).__name__


def _origin(url: str) -> str:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or default}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
