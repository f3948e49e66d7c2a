"""Settings of the audit store (``SIEM_EXPORT_STORE__…``), shared by ``run index`` and ``serve``.

``url`` picks the store: ``sqlite:///path/audit.db`` (the embedded default, for one machine)
or ``postgresql://user@host:5432/db`` (production; the password from the URL or libpq's usual
sources such as ``PGPASSWORD`` and ``~/.pgpass``). ``retention_days`` is the window the REST
API documents: the index process deletes older events in batches every
``retention_check_seconds``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.index.store import check_postgres_url, sqlite_path


def _default_url() -> SecretStr:
    return SecretStr(f"sqlite://{Path.cwd() / 'audit.db'}")


class StoreSettings(BaseModel):
    """Where the indexed events live and how long they are kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr = Field(
        default_factory=_default_url,
        description="sqlite:///abs/path/audit.db (default: audit.db in the working directory) "
        "or postgresql://user@host:port/db.",
    )
    pool_size: int = Field(default=4, ge=1, le=64, description="PostgreSQL connections.")
    retention_days: int = Field(
        default=365, ge=1, le=36500, description="Events older than this are deleted."
    )
    retention_check_seconds: float = Field(
        default=3600.0, gt=0, le=86400, description="How often the index process deletes."
    )
    retention_batch: int = Field(
        default=10_000, ge=100, le=1_000_000, description="Rows deleted per transaction."
    )

    @field_validator("url")
    @classmethod
    def _known_store(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url.startswith("sqlite:"):
            sqlite_path(url)
        elif url.startswith(("postgresql:", "postgres:")):
            check_postgres_url(url)
        else:
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value
