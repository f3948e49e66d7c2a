"""What the storage sink needs from a cloud provider: write one object, whole or not at all.

Each provider module (``s3``, ``azure``, ``gcs``) implements :class:`ObjectWriter` for one
destination (bucket or container and its credentials). The sink calls ``put`` once per finished
file and acknowledges the file's events only after ``put`` returned; ``put`` raises
:class:`StorageError` otherwise.

Contract of ``put``:

* The object named ``key`` becomes visible complete or not at all: a multi-part upload that
  fails is aborted (best effort), never committed half-written.
* Writing the same key again replaces the object (a replay after a crash overwrites).
* ``read_part(offset, size)`` returns ``size`` bytes of the content from ``offset`` (fewer only
  at the end); it may be called from worker threads and more than once for the same range (a
  retried part).
* ``metadata`` is stored as the object's user metadata (lowercase ASCII names, no ``-``);
  ``sha256_hex`` is the digest of the whole content, verified by the server where the provider
  supports it.
* Errors: :class:`StorageError` with ``permanent=True`` when retrying cannot help before a person
  acts (denied, missing bucket or container, bad credentials, unusable key), else ``False``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from connectors.errors import ConnectorsError


class StorageError(ConnectorsError):
    """Writing an object failed; ``permanent`` says whether retrying can help.

    ``str()`` names the provider, bucket and key, the operation and the server's error code and
    message: never a credential. ``retriable`` is ``not permanent`` (the project's flag).
    """

    def __init__(
        self,
        message: str,
        *,
        bucket: str,
        key: str | None = None,
        permanent: bool,
        code: str | None = None,
        provider: str = "s3",
    ) -> None:
        self.provider = provider
        self.bucket = bucket
        self.key = key
        self.permanent = permanent
        self.retriable = not permanent
        self.code = code
        where = f"{provider}://{bucket}/{key}" if key is not None else f"{provider}://{bucket}"
        super().__init__(f"{where}: {message}")


class ObjectWriter(Protocol):
    """One destination's object store, as the storage sink uses it."""

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
        """Write ``size`` bytes read through ``read_part`` as ``key`` (see the module)."""
        ...

    async def close(self) -> None:
        """Release connections; the writer is not used afterwards."""
        ...
