"""Errors raised by the ``connectors`` package.

Every error carries a ``retriable`` flag; retry decisions read the flag.

    ConnectorsError              base of everything raised here
    └── SettingsError            settings (environment, YAML file, CLI) are wrong; ``problems``
                                 lists each wrong key with the reason. The CLI exits with 2.
"""

from __future__ import annotations


class ConnectorsError(Exception):
    """Base class of every error raised by the connectors package."""

    retriable: bool = False


class SettingsError(ConnectorsError):
    """One or more settings are wrong or unknown; each problem names the key and why."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"invalid settings in {source}" if source else "invalid settings"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))
