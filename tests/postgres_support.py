"""A real PostgreSQL server for the index store's tests, private to the tests, on 127.0.0.1.

``PostgresCluster()`` makes a temporary directory, runs ``initdb`` there (Debian's
``postgresql``: binaries under ``/usr/lib/postgresql/<major>/bin``, newest major first, else
``initdb`` on PATH) and starts ``postgres`` on a free loopback port: TCP on 127.0.0.1 only,
its Unix socket in the temporary directory (never ``/var/run/postgresql``), trust
authentication for the superuser ``siem`` (nobody else can reach a loopback port of a test
machine's private cluster, and no password ends up in a file). Durability is switched off
(``fsync``, ``synchronous_commit``, ``full_page_writes``): a test cluster never survives a
crash anyway, and it makes the 10,000-row tests quick. ``PostgresCluster(settings={...})``
replaces any of these server settings (:data:`TEST_SETTINGS`) for one cluster; a benchmark
(bench/query.py) switches durability back on, as production runs it.

PostgreSQL refuses to run as root. When the tests run as root (CI does), initdb and postgres run
as Debian's ``postgres`` system user (created by the package) and the temporary directory is
handed to that user.

``stop()`` sends SIGINT (PostgreSQL's "fast" shutdown: cancels sessions, checkpoints, exits),
SIGKILL after a timeout, and removes the directory. The server also gets SIGTERM if the thread
that started it dies (PR_SET_PDEATHSIG), so a pytest killed hard leaves no postgres behind.

Fixtures, taken in by importing them (pytest registers a fixture under its own name)::

    from tests.postgres_support import postgres_cluster_fixture  # noqa: F401
    from tests.postgres_support import postgres_url_fixture  # noqa: F401

``postgres_cluster`` is one cluster for the whole test session (pytest makes a session fixture
per importing module; they share one cluster, stopped when the last of them ends);
``postgres_url`` is a fresh, empty database in it for one test (``postgresql://siem@…/test_N``),
dropped afterwards. If PostgreSQL is missing the fixtures fail (never skip), naming the Debian
package that ``scripts/bootstrap`` installs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import psycopg
import pytest
from psycopg import sql

from tests.process_support import die_with_parent as _die_with_parent
from tests.process_support import free_port

HOST = "127.0.0.1"
SUPERUSER = "siem"
DEBIAN_PACKAGE = "postgresql"
RUN_AS_WHEN_ROOT = "postgres"  # the system user Debian's package creates
_debian_bin_root = Path("/usr/lib/postgresql")
# Server settings of a test cluster (``-c name=value``); ``PostgresCluster(settings=…)`` replaces
# any of them. Durability off: see the module's docstring.
TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "64MB",
}
_database_numbers = itertools.count(1)


class PostgresError(RuntimeError):
    """PostgreSQL is missing or does not come up or go down as it should."""


def find_bindir() -> Path:
    """Directory holding initdb and postgres: Debian's newest major, else PATH's initdb."""
    majors: list[tuple[int, Path]] = []
    if _debian_bin_root.is_dir():
        for entry in _debian_bin_root.iterdir():
            if entry.name.isdigit() and (entry / "bin" / "initdb").is_file():
                majors.append((int(entry.name), entry / "bin"))
    if majors:
        return max(majors)[1]
    found = shutil.which("initdb")
    if found is not None and (Path(found).parent / "postgres").is_file():
        return Path(found).parent
    raise PostgresError(
        "initdb/postgres not found (looked in /usr/lib/postgresql/*/bin and on PATH): the index "
        f"store's tests need a real PostgreSQL. Install the Debian package {DEBIAN_PACKAGE} "
        f"(scripts/bootstrap does, as root: apt-get install -y {DEBIAN_PACKAGE})"
    )


class PostgresCluster:
    """A private PostgreSQL cluster on 127.0.0.1 (see the module's docstring).

    Start it from the thread that stops it: the server is tied to that thread's life.
    """

    def __init__(
        self, *, start_timeout: float = 60.0, settings: Mapping[str, str] | None = None
    ) -> None:
        self.start_timeout = start_timeout
        self.settings = {**TEST_SETTINGS, **(settings or {})}
        self.bindir = find_bindir()
        self.run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(RUN_AS_WHEN_ROOT)
            except KeyError:
                raise PostgresError(
                    f"running as root, and there is no {RUN_AS_WHEN_ROOT!r} user to run "
                    f"PostgreSQL as (Debian's {DEBIAN_PACKAGE} package creates it)"
                ) from None
            self.run_as = RUN_AS_WHEN_ROOT
        self.directory = Path(tempfile.mkdtemp(prefix="siem-export-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        if self.run_as is not None:
            shutil.chown(self.directory, user=self.run_as, group=None)

    # -- life cycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether postgres runs."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PostgresCluster:
        """initdb (the first time), then start postgres on a free port and wait for it."""
        if self.running:
            raise PostgresError("postgres is already running")
        if not self.data.exists():
            self._initdb()
        for _attempt in range(3):  # another process may take the free port before postgres
            self.port = free_port()
            if self._spawn():
                return self
        raise PostgresError(f"postgres did not start\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it hangs; then remove the directory."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
                    raise PostgresError(
                        f"postgres (pid {proc.pid}) ignored SIGINT for {timeout} s: killed\n"
                        + self.tail()
                    ) from None
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- use ----------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """``postgresql://siem@127.0.0.1:PORT/DATABASE`` (trust authentication, no password)."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its name."""
        name = f"test_{next(_database_numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending whatever sessions a failed test left in it."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no postgres log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ----------------------------------------------------------------------

    def _initdb(self) -> None:
        command = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]
        result = subprocess.run(
            command, capture_output=True, user=self.run_as, timeout=120, check=False
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise PostgresError(f"initdb failed (exit {result.returncode}):\n{output}")

    def _spawn(self) -> bool:
        """Start postgres on ``self.port``; False if it exited early (the port was taken)."""
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            f"unix_socket_directories={self.directory}",
        ]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        log = self.log.open("ab")
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.run_as,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            with (
                contextlib.suppress(psycopg.OperationalError),
                psycopg.connect(self.url(), connect_timeout=2),
            ):
                return True
            time.sleep(0.1)
        self._proc.kill()
        self._proc.wait(10)
        self._proc = None
        raise PostgresError(f"postgres did not accept connections in {self.start_timeout} s")


# The cluster the session's fixtures share, and how many fixture instances use it: each module
# that imports the fixture gets a session fixture of its own, and they all get this cluster.
_shared: PostgresCluster | None = None
_users = 0


@pytest.fixture(name="postgres_cluster", scope="session")
def postgres_cluster_fixture() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the whole test session, stopped at its end."""
    global _shared, _users
    if _shared is None:
        try:
            cluster = PostgresCluster()
        except PostgresError as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            cluster.start()
        except PostgresError as exc:
            cluster.stop()
            pytest.fail(str(exc), pytrace=False)
        except BaseException:
            cluster.stop()
            raise
        _shared = cluster
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0 and _shared is not None:
            cluster, _shared = _shared, None
            cluster.stop()


@pytest.fixture(name="postgres_url")
def postgres_url_fixture(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh database in the session's cluster, dropped after the test."""
    name = postgres_cluster.create_database()
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.drop_database(name)
