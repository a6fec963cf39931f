"""Settings of the observe layer: access log format, request log place and retention, body logging.

Every field has an environment variable, read once by :meth:`ObserveSettings.from_env` (never at
import). ``AIB_REQUEST_LOG=off`` turns the SQLite request log off; any other value is its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

LogFormat = Literal["human", "json"]
DEFAULT_REQUEST_LOG = Path("var/requests.db")
_OFF = ("", "0", "off", "false", "no", "none")


def _flag(raw: str | None, default: bool) -> bool:
    return default if raw is None else raw.strip().lower() not in _OFF


@dataclass(frozen=True)
class ObserveSettings:
    metrics: bool = True  # /metrics and the Prometheus observer
    access_log: bool = True  # one line per request on the `aib.access` logger
    log_format: LogFormat = "human"
    log_level: str = "info"
    request_log: Path | None = DEFAULT_REQUEST_LOG  # None: no SQLite request log
    retention_days: float = 14.0  # rows older than this are deleted
    retention_rows: int = 1_000_000  # and only the newest this many are kept
    retention_interval_s: float = 300.0  # how often retention runs
    log_bodies: bool = False  # store prompt and response bodies (secrets are redacted either way)
    queue_size: int = 10_000  # entries waiting for the writer; more are dropped and counted
    batch_size: int = 500  # rows per transaction at most
    flush_interval_s: float = 0.25  # the writer wakes this often
    max_db_mb: float | None = None  # hard cap on the file size; writes past it are dropped

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ObserveSettings:
        """Defaults, then ``AIB_*`` variables, then ``overrides`` (what a command line said)."""
        e = os.environ if env is None else env
        fmt = e.get("AIB_LOG_FORMAT", "human").strip().lower()
        if fmt not in ("human", "json"):
            raise ValueError(f"AIB_LOG_FORMAT={fmt!r}: use 'human' or 'json'")
        raw_path = e.get("AIB_REQUEST_LOG")
        path = (
            DEFAULT_REQUEST_LOG
            if raw_path is None
            else None
            if raw_path.strip().lower() in _OFF
            else Path(raw_path)
        )
        max_mb = e.get("AIB_REQUEST_LOG_MAX_MB")
        s = cls(
            metrics=_flag(e.get("AIB_METRICS"), True),
            access_log=_flag(e.get("AIB_ACCESS_LOG"), True),
            log_format=fmt,  # type: ignore[arg-type]
            log_level=e.get("AIB_LOG_LEVEL", "info").strip().lower(),
            request_log=path,
            retention_days=float(e.get("AIB_REQUEST_LOG_RETENTION_DAYS", cls.retention_days)),
            retention_rows=int(e.get("AIB_REQUEST_LOG_MAX_ROWS", cls.retention_rows)),
            log_bodies=_flag(e.get("AIB_LOG_BODIES"), False),
            max_db_mb=float(max_mb) if max_mb else None,
        )
        return replace(s, **overrides) if overrides else s  # type: ignore[arg-type]
