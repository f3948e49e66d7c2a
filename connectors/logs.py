"""Log output of the command line: one line per record, the message then its fields.

Who calls it: the CLI, once settings are loaded. Every module logs a capitalised sentence with
structured fields in ``extra`` (``tenant``, ``partition``, ``reason``…); the standard
formatter would drop those, so this one appends them as ``key=value`` pairs (logfmt style,
values quoted when they contain spaces or quotes), which log shippers parse as fields.
"""

from __future__ import annotations

import logging

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def _render(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class FieldsFormatter(logging.Formatter):
    """``logging.Formatter`` that appends a record's ``extra`` fields as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={_render(value)}"
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep tracebacks below the fields
        return f"{head} {' '.join(fields)}{sep}{tail}"


def configure_logging(level: str) -> None:
    """Send every logger's records to stderr as one formatted line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
