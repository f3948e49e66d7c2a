"""A real single-node Apache Kafka (KRaft, combined broker+controller) for development and tests.

Runs the pinned Kafka release from its Maven Central jars (``streams.devbroker_jars``) with
``java``, no Docker. Everything of one broker lives in one data directory (``.kafka`` by
default for the ``siem-export kafka`` commands, a temporary one for the test fixtures)::

    server.properties   written on every start       data/         log.dirs (topics, metadata)
    broker.json         pid, ports and cluster id    logs/         server.log (quiet log4j2)
    console.log         the JVM's stdout/stderr      .lock         serialises up/down

Listeners bind 127.0.0.1 only, on free ports (or ``port`` for PLAINTEXT). The storage is
formatted once; a later :func:`up` on the same directory reuses the data, the cluster id and,
when still free, the recorded ports. :func:`up` returns only once the broker answers metadata
requests; a broker that dies while starting raises BrokerError with the tail of its logs.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.devbroker_jars import KAFKA_VERSION, Progress, ensure_jars, java_argv, require_tool
from streams.errors import BrokerError

__all__ = ["KAFKA_VERSION", "Broker", "BrokerStatus", "DEFAULT_DATA_DIR", "down", "status", "up"]

DEFAULT_DATA_DIR = Path(".kafka")
HOST = "127.0.0.1"
STATE_FILE = "broker.json"
CONSOLE_LOG = "console.log"
START_TIMEOUT = 60.0
_TAIL_LINES = 20

_log = logging.getLogger(__name__)
_client_log = logging.getLogger(f"{__name__}.librdkafka")


@dataclass(frozen=True)
class BrokerState:
    """What ``broker.json`` records; ``pid`` is None while the broker is stopped."""

    port: int
    controller_port: int
    cluster_id: str
    pid: int | None = None
    version: str = KAFKA_VERSION

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass(frozen=True)
class Broker:
    """A running broker as returned by :func:`up`; ``started`` is False if it already ran."""

    data_dir: Path
    bootstrap: str
    pid: int
    started: bool


@dataclass(frozen=True)
class BrokerStatus:
    """``running`` means the recorded process is alive and answers at ``bootstrap``."""

    data_dir: Path
    running: bool
    pid: int | None
    bootstrap: str | None


def up(
    data_dir: Path | str | None = None,
    port: int | None = None,
    *,
    preferred_port: int | None = None,
    timeout: float = START_TIMEOUT,
    progress: Progress | None = None,
) -> Broker:
    """Start the broker of ``data_dir`` (or report the one already running there).

    Without ``port``, the recorded port is reused when free, else ``preferred_port`` when free
    (the CLI passes 9092 so the default settings reach it), else any free port.
    """
    java = require_tool("java")
    root = _resolve(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        state = _read_state(root)
        if state is not None and state.pid is not None and _alive(state.pid, root):
            if port is not None and port != state.port:
                raise BrokerError(
                    f"the broker of {root} already runs at {state.bootstrap} (pid {state.pid});"
                    " run 'siem-export kafka down' before choosing another port"
                )
            _wait_ready(state.pid, root, state.bootstrap, timeout)
            return Broker(root, state.bootstrap, state.pid, started=False)
        lib = ensure_jars(progress)
        plain, controller = _choose_ports(state, port, preferred_port)
        state = BrokerState(plain, controller, _cluster_id(root, state))
        props = _write_properties(root, state)
        if not (root / "data" / "meta.properties").is_file():
            _format(java, lib, props, state.cluster_id)
        pid = _spawn(java, lib, root, props)
        state = replace(state, pid=pid)
        _write_state(root, state)
        try:
            _wait_ready(pid, root, state.bootstrap, timeout)
        except BaseException:
            _stop(pid, root, 10.0)
            _write_state(root, replace(state, pid=None))
            raise
        return Broker(root, state.bootstrap, pid, started=True)


def status(data_dir: Path | str | None = None, *, timeout: float = 5.0) -> BrokerStatus:
    """Whether the broker of ``data_dir`` runs and answers (never starts or stops anything)."""
    root = _resolve(data_dir)
    state = _read_state(root)
    if state is None:
        return BrokerStatus(root, running=False, pid=None, bootstrap=None)
    pid = state.pid if state.pid is not None and _alive(state.pid, root) else None
    running = pid is not None and _answers(state.bootstrap, timeout)
    return BrokerStatus(root, running=running, pid=pid, bootstrap=state.bootstrap)


def down(data_dir: Path | str | None = None, timeout: float = 30.0) -> bool:
    """Stop the broker of ``data_dir`` cleanly (SIGTERM, SIGKILL past ``timeout``).

    Idempotent; returns True if a running broker was stopped.
    """
    root = _resolve(data_dir)
    if not (root / STATE_FILE).is_file():
        return False
    with _locked(root):
        state = _read_state(root)
        if state is None or state.pid is None:
            return False
        was_running = _alive(state.pid, root)
        if was_running:
            _stop(state.pid, root, timeout)
        _write_state(root, replace(state, pid=None))
        return was_running


# --- state, ports, configuration -------------------------------------------------------------


def _resolve(data_dir: Path | str | None) -> Path:
    return Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser().resolve()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_state(root: Path) -> BrokerState | None:
    path = root / STATE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return BrokerState(
            port=int(raw["port"]),
            controller_port=int(raw["controller_port"]),
            cluster_id=str(raw["cluster_id"]),
            pid=None if raw.get("pid") is None else int(raw["pid"]),
            version=str(raw.get("version", KAFKA_VERSION)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BrokerError(f"cannot read {path}: {exc}") from exc


def _write_state(root: Path, state: BrokerState) -> None:
    tmp = root / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / STATE_FILE)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does on Linux
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port(taken: int | None = None) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port != taken:
            return port


def _choose_ports(
    state: BrokerState | None, port: int | None, preferred: int | None = None
) -> tuple[int, int]:
    if port is not None:
        if not _port_free(port):
            raise BrokerError(f"port {port} on {HOST} is in use")
        plain = port
    elif state is not None and _port_free(state.port):
        plain = state.port
    elif preferred is not None and _port_free(preferred):
        plain = preferred
    else:
        plain = _free_port()
    if state is not None and state.controller_port != plain and _port_free(state.controller_port):
        return plain, state.controller_port
    return plain, _free_port(taken=plain)


def _new_cluster_id() -> str:
    """A random id in Kafka's form (``Uuid.randomUuid``): URL-safe base64, no padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _cluster_id(root: Path, state: BrokerState | None) -> str:
    meta = root / "data" / "meta.properties"
    if meta.is_file():  # the formatted storage is the truth
        for line in meta.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "cluster.id":
                return value.strip()
    return state.cluster_id if state is not None else _new_cluster_id()


def _write_properties(root: Path, state: BrokerState) -> Path:
    plain = f"PLAINTEXT://{HOST}:{state.port}"
    controller = f"CONTROLLER://{HOST}:{state.controller_port}"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{HOST}:{state.controller_port}",
        "listeners": f"{plain},{controller}",
        "advertised.listeners": f"{plain},{controller}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "log.dirs": str(root / "data"),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
    }
    lines = [f"# Written by streams/devbroker.py (Kafka {KAFKA_VERSION}); rewritten on each up."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    props = root / "server.properties"
    props.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return props


# --- processes ----------------------------------------------------------------------------------


def _format(java: str, lib: Path, props: Path, cluster_id: str) -> None:
    root = props.parent
    argv = java_argv(java, lib, root / "logs", "kafka.tools.StorageTool", "format")
    argv += ["--standalone", "-t", cluster_id, "-c", str(props)]
    result = subprocess.run(  # noqa: S603 - fixed argument list, no shell
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-_TAIL_LINES:])
        raise BrokerError(f"formatting the Kafka storage in {root} failed:\n{tail}")


def _spawn(java: str, lib: Path, root: Path, props: Path) -> int:
    """Start ``kafka.Kafka`` detached (own session, output to console.log); return its pid."""
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    argv = java_argv(java, lib, logs, f"-XX:ErrorFile={root / 'hs_err_pid%p.log'}")
    argv += ["kafka.Kafka", str(props)]
    out = os.open(root / CONSOLE_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        # posix_spawn rather than Popen: the broker outlives us, and a Popen object dropped
        # while its child runs emits a ResourceWarning.
        return os.posix_spawn(
            java,
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(out)
        os.close(devnull)


def _alive(pid: int, root: Path) -> bool:
    """True if ``pid`` is a live ``kafka.Kafka`` started on ``root``'s server.properties."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs (macOS): trust the pid
        return True
    try:
        stat = (proc / "stat").read_text()
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return b"kafka.Kafka" in argv and str(root / "server.properties").encode() in argv


def _stop(pid: int, root: Path, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, root):
                return
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            _log.warning("Kafka pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout)
    raise BrokerError(f"Kafka pid {pid} did not exit after SIGKILL")


def _answers(bootstrap: str, timeout: float) -> bool:
    """True if a broker answers a metadata request at ``bootstrap`` within ``timeout``."""
    host, _, port = bootstrap.rpartition(":")
    try:  # a plain connect first keeps librdkafka from logging refused connections
        socket.create_connection((host, int(port)), timeout=min(timeout, 1.0)).close()
    except OSError:
        return False
    client = AdminClient({"bootstrap.servers": bootstrap}, logger=_client_log)
    try:
        metadata = client.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _wait_ready(pid: int, root: Path, bootstrap: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not _alive(pid, root):
            # console.log has this start's errors; server.log is shared with earlier runs
            tail = _tail(root / CONSOLE_LOG) or _tail(root / "logs" / "server.log")
            tail = tail or "(no log output)"
            raise BrokerError(f"Kafka (pid {pid}) exited while starting; last log lines:\n{tail}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"Kafka (pid {pid}) did not answer at {bootstrap} within {timeout:.0f} s; "
                f"see {root / 'logs' / 'server.log'}"
            )
        if _answers(bootstrap, min(2.0, remaining)):
            return
        time.sleep(0.2)
