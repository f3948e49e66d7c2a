"""Shared fixtures: a real Apache Kafka broker for the whole test session.

``kafka_bootstrap`` starts a private broker (``streams.devbroker``) in a temporary directory on
free ports, so it never touches a developer's ``.kafka`` broker, and stops it when the session
ends, whatever the test results. ``kafka_lib_dir`` is the cached Kafka jar directory, for tests
that run Kafka's Java tools::

    java -cp f"{kafka_lib_dir}/*" org.apache.kafka.tools.ConsoleProducer ...
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import devbroker
from streams.devbroker_jars import ensure_jars
from streams.errors import ToolMissingError


@pytest.fixture(scope="session")
def kafka_lib_dir() -> Path:
    """Directory of the pinned Kafka release's jars (fetched once per machine)."""
    try:
        return ensure_jars()
    except ToolMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory, kafka_lib_dir: Path) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a broker private to this test session."""
    data_dir = tmp_path_factory.mktemp("kafka")
    try:
        broker = devbroker.up(data_dir)
    except ToolMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        devbroker.down(data_dir)
