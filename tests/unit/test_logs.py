"""Log lines carry the structured fields of each record."""

from __future__ import annotations

import logging

import pytest

from connectors.logs import FieldsFormatter

pytestmark = pytest.mark.unit


def _line(extra: dict[str, object], exc: bool = False) -> str:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "Lane failed.", (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            record.exc_info = sys.exc_info()
    return FieldsFormatter("%(levelname)s %(message)s").format(record)


def test_extra_fields_follow_the_message() -> None:
    line = _line({"tenant": "tnt_a", "partition": 3, "reason": 'HTTP 500 "oops"'})
    assert line == 'WARNING Lane failed. tenant=tnt_a partition=3 reason="HTTP 500 \\"oops\\""'


def test_no_fields_no_change_and_tracebacks_stay_below() -> None:
    assert _line({}) == "WARNING Lane failed."
    head, _, tail = _line({"tenant": "t"}, exc=True).partition("\n")
    assert head == "WARNING Lane failed. tenant=t"
    assert "RuntimeError: boom" in tail
