"""The jars and tools of the local development Kafka broker (see ``streams.devbroker``).

Apache Kafka is run straight from its Maven Central jars, collected once by Maven from
``streams/kafka/pom.xml`` into a per-user cache::

    ~/.cache/siem-export/kafka-<KAFKA_VERSION>/lib

(``$SIEM_EXPORT_KAFKA_CACHE/kafka-<KAFKA_VERSION>/lib`` when that variable is set).

A marker file is written only after a complete copy, so an interrupted fetch is redone; once
the marker is there, :func:`ensure_jars` neither calls ``mvn`` nor needs the network. The
marker records a digest of the pom, so editing the pom (a new pinned version) fetches again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from streams.errors import BrokerError, ToolMissingError

KAFKA_VERSION = "4.3.1"
"""The pinned Apache Kafka release; must equal ``kafka.version`` in ``streams/kafka/pom.xml``."""

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
CACHE_ENV = "SIEM_EXPORT_KAFKA_CACHE"
KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM_PATH = KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.yaml"
MARKER_NAME = "complete"
JVM_OPTIONS = ("-Xmx512m", "-Xms256m")

_INSTALL_HINTS = {
    "java": "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)",
    "mvn": "install Apache Maven 3.8+ (Debian: apt-get install maven)",
}

Progress = Callable[[str], None]


def require_tool(name: str) -> str:
    """Return the absolute path of ``java`` or ``mvn`` or raise a one-line ToolMissingError."""
    found = shutil.which(name)
    if found is None:
        hint = _INSTALL_HINTS.get(name, f"install {name}")
        raise ToolMissingError(f"{name} not found: {hint}")
    return found


def cache_dir() -> Path:
    """The directory holding this Kafka version's jars (``lib``) and its completion marker."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "siem-export"
    return root / f"kafka-{KAFKA_VERSION}"


def lib_dir() -> Path:
    """Where the jars are (or will be) once :func:`ensure_jars` has run."""
    return cache_dir() / "lib"


def classpath(lib: Path) -> str:
    """The ``-cp`` argument for every jar of ``lib`` (Java expands the ``*`` itself)."""
    return str(lib / "*")


def java_argv(java: str, lib: Path, logs_dir: Path, *args: str) -> list[str]:
    """``java`` with the broker's heap, class path and quiet logging, then ``args``."""
    return [
        java,
        *JVM_OPTIONS,
        "-cp",
        classpath(lib),
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={logs_dir}",
        *args,
    ]


def _pom_digest() -> str:
    return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()


def _is_complete(cache: Path) -> bool:
    marker = cache / MARKER_NAME
    try:
        return marker.read_text(encoding="utf-8").strip() == _pom_digest()
    except OSError:
        return False


def ensure_jars(progress: Progress | None = None) -> Path:
    """Return the cached jar directory, fetching it from Maven Central first if needed.

    Safe to call from several processes at once (a file lock serialises the fetch).
    Raises ToolMissingError when a fetch is needed and ``mvn`` is missing, BrokerError when
    Maven fails (with the tail of its output).
    """
    cache = cache_dir()
    if _is_complete(cache):
        return cache / "lib"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_complete(cache):  # another process may have finished meanwhile
            _fetch(cache, progress)
    return cache / "lib"


def _fetch(cache: Path, progress: Progress | None) -> None:
    mvn = require_tool("mvn")
    if progress is not None:
        progress(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {cache}")
    (cache / MARKER_NAME).unlink(missing_ok=True)
    for leftover in cache.glob("lib.partial-*"):  # from a fetch that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix="lib.partial-", dir=cache))
    try:
        command = [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(POM_PATH),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            cwd=cache,
        )
        if result.returncode != 0:
            tail = "\n".join(result.stdout.strip().splitlines()[-15:])
            raise BrokerError(
                f"mvn could not fetch the Kafka {KAFKA_VERSION} jars "
                f"(exit {result.returncode}):\n{tail}"
            )
        main_jar = staging / f"kafka_2.13-{KAFKA_VERSION}.jar"
        if not main_jar.is_file():
            raise BrokerError(f"mvn succeeded but {main_jar.name} is missing from {staging}")
        lib = cache / "lib"
        if lib.exists():
            shutil.rmtree(lib)
        staging.rename(lib)
        (cache / MARKER_NAME).write_text(_pom_digest() + "\n", encoding="utf-8")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
