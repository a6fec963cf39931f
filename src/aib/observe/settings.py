"""Settings of the observe layer: access log format, request log place and retention, body logging.

Every field has an environment variable, read once by :meth:`ObserveSettings.from_env` (never at
import). ``AIB_REQUEST_LOG=off`` turns the SQLite request log off; any other value is its path.
``AIB_OBSERVE_WRITER`` says who formats access lines and writes request-log rows: ``process`` (the
default: a writer process, so the gateway's CPU goes to requests) or ``thread`` (a thread of the
gateway process, and access lines go through the ``aib.access`` logger's own handlers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

LogFormat = Literal["human", "json"]
WriterMode = Literal["process", "thread"]
DEFAULT_REQUEST_LOG = Path("var/requests.db")
_OFF = ("", "0", "off", "false", "no", "none")


def _flag(raw: str | None, default: bool) -> bool:
    return default if raw is None else raw.strip().lower() not in _OFF


def _number(env: Mapping[str, str], name: str, default: float, whole: bool = False) -> float:
    """``env[name]`` as a number > 0 (``default`` when unset); a ValueError that names the variable."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{name}={raw!r}: not {kind}") from None
    if not value > 0:
        raise ValueError(f"{name}={raw!r}: use a number > 0")
    return value


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
    flush_interval_s: float = 0.05  # queued entries are handed to the writer this often
    writer: WriterMode = "process"  # who writes access lines and request-log rows
    max_db_mb: float | None = None  # hard cap on the file size; writes past it are dropped

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ObserveSettings:
        """Defaults, then ``AIB_*`` variables, then ``overrides`` (what a command line said)."""
        e = os.environ if env is None else env
        fmt = e.get("AIB_LOG_FORMAT", "human").strip().lower()
        if fmt not in ("human", "json"):
            raise ValueError(f"AIB_LOG_FORMAT={fmt!r}: use 'human' or 'json'")
        writer = e.get("AIB_OBSERVE_WRITER", "process").strip().lower()
        if writer not in ("process", "thread"):
            raise ValueError(f"AIB_OBSERVE_WRITER={writer!r}: use 'process' or 'thread'")
        raw_path = e.get("AIB_REQUEST_LOG")
        path = (
            DEFAULT_REQUEST_LOG
            if raw_path is None
            else None
            if raw_path.strip().lower() in _OFF
            else Path(raw_path)
        )
        s = cls(
            metrics=_flag(e.get("AIB_METRICS"), True),
            access_log=_flag(e.get("AIB_ACCESS_LOG"), True),
            log_format=fmt,  # type: ignore[arg-type]
            log_level=e.get("AIB_LOG_LEVEL", "info").strip().lower(),
            request_log=path,
            retention_days=_number(e, "AIB_REQUEST_LOG_RETENTION_DAYS", cls.retention_days),
            retention_rows=int(_number(e, "AIB_REQUEST_LOG_MAX_ROWS", cls.retention_rows, whole=True)),
            log_bodies=_flag(e.get("AIB_LOG_BODIES"), False),
            max_db_mb=_number(e, "AIB_REQUEST_LOG_MAX_MB", 0.0) or None,
            writer=writer,  # type: ignore[arg-type]
        )
        return replace(s, **overrides) if overrides else s  # type: ignore[arg-type]
