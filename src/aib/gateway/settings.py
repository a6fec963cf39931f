"""Settings of one gateway process (not routing: that is the RoutingPlan)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


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

    @property
    def admin_key(self) -> str | None:
        return os.environ.get(self.admin_key_env) or None
