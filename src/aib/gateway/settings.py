"""Settings of one gateway process (not routing: that is the RoutingPlan)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aib.gateway.httprequest import ServerLimits


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: give a whole number (default {default})") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: give a number above 0 (default {default})")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: give a number of seconds (default {default:g})") from None
    if not value > 0:
        raise ValueError(f"{name}={raw!r}: give a number of seconds above 0 (default {default:g})")
    return value


def _int(name: str, default: int) -> Any:
    return field(default_factory=lambda: _env_int(name, default))


def _seconds(name: str, default: float) -> Any:
    return field(default_factory=lambda: _env_float(name, default))


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 4000
    config_dir: Path | None = None  # None: the defaults shipped inside the package
    max_body_bytes: int = field(default_factory=lambda: _env_int("AIB_MAX_BODY_BYTES", 32 * 1024 * 1024))
    admin_key_env: str = "AIB_ADMIN_KEY"
    # client keys (aib.auth): None: $AIB_KEYS_DB, else keys.db beside the request log, else var/keys.db
    keys_db: Path | None = None
    insecure_open: bool = False  # `--insecure-open`: serve a non-loopback address without keys (warned)
    health_checks: bool = True  # background probes (tests of routing alone turn them off)
    drain_timeout_s: float = 30.0
    # hot reload (aib.reload); None: from AIB_RELOAD_WATCH, AIB_RELOAD_DEBOUNCE_MS, AIB_BACKUPS_KEEP,
    # AIB_BACKUPS_DIR, AIB_RELOAD_VERIFY_TIMEOUT_S, else the defaults in aib.reload.settings
    watch_config: bool | None = None
    reload_debounce_ms: int | None = None
    backups_keep: int | None = None
    backups_dir: Path | None = None
    reload_verify_timeout_s: float | None = None
    # the HTTP edge (docs/security.md): what one client may hold, each from its AIB_* variable
    keepalive_s: float = _seconds("AIB_KEEPALIVE_S", 5.0)
    head_timeout_s: float = _seconds("AIB_HEAD_TIMEOUT_S", 30.0)
    body_timeout_s: float = _seconds("AIB_BODY_TIMEOUT_S", 60.0)
    write_timeout_s: float = _seconds("AIB_WRITE_TIMEOUT_S", 30.0)
    max_connections: int = _int("AIB_MAX_CONNECTIONS", 1000)
    max_pipeline: int = _int("AIB_MAX_PIPELINE", 4)
    max_head_bytes: int = _int("AIB_MAX_HEAD_BYTES", 64 * 1024)
    max_headers: int = _int("AIB_MAX_HEADERS", 100)
    max_model_chars: int = _int("AIB_MAX_MODEL_CHARS", 256)
    # what an upstream's answer head may hold (aib.gateway.httpclient): past it, 502
    upstream_max_head_bytes: int = _int("AIB_UPSTREAM_MAX_HEAD_BYTES", 64 * 1024)
    upstream_max_headers: int = _int("AIB_UPSTREAM_MAX_HEADERS", 100)

    def server_limits(self) -> ServerLimits:
        """What our HTTP server lets one client hold."""
        return ServerLimits(
            keepalive_s=self.keepalive_s,
            head_timeout_s=self.head_timeout_s,
            body_timeout_s=self.body_timeout_s,
            write_timeout_s=self.write_timeout_s,
            max_connections=self.max_connections,
            max_pipeline=self.max_pipeline,
            max_head_bytes=self.max_head_bytes,
            max_headers=self.max_headers,
        )

    @property
    def admin_key(self) -> str | None:
        return os.environ.get(self.admin_key_env) or None
