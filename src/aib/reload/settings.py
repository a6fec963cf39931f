"""How the gateway reloads its configuration: watching, debounce, backups, verification.

Each value comes from :class:`~aib.gateway.settings.GatewaySettings` when set there (tests, a
command line), else from its environment variable, else the default below. A bad value in the
environment is a :class:`~aib.config.errors.ConfigError`, reported like a config error at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aib.config.errors import ConfigError, ConfigIssue
from aib.gateway.settings import GatewaySettings

_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")


@dataclass(frozen=True)
class ReloadSettings:
    watch: bool = True  # AIB_RELOAD_WATCH: reload when a config file changes
    debounce_ms: int = 100  # AIB_RELOAD_DEBOUNCE_MS: the files must stay unchanged this long first
    backups_keep: int = 20  # AIB_BACKUPS_KEEP: backups kept (0: none are written)
    backups_dir: Path | None = None  # AIB_BACKUPS_DIR: default <config dir>/backups
    verify_timeout_s: float = 5.0  # AIB_RELOAD_VERIFY_TIMEOUT_S: probes of new providers, at most
    history: int = 100  # reloads remembered for GET /admin/reloads

    @classmethod
    def resolve(cls, gs: GatewaySettings, env: Mapping[str, str] | None = None) -> ReloadSettings:
        e = os.environ if env is None else env
        issues: list[ConfigIssue] = []

        def pick(value: object, name: str, default: object, parse: type, low: float) -> object:
            if value is not None:
                return value
            raw = e.get(name, "").strip()
            if not raw:
                return default
            try:
                if parse is bool:
                    if raw.lower() not in _ON + _OFF:
                        raise ValueError
                    return raw.lower() in _ON
                parsed = parse(raw)
                if parsed < low:
                    raise ValueError
                return parsed
            except ValueError:
                want = (
                    "on or off" if parse is bool else f"a {'whole ' if parse is int else ''}number >= {low:g}"
                )
                issues.append(ConfigIssue("environment", None, name, f"expected {want}, got {raw!r}"))
                return default

        watch = pick(gs.watch_config, "AIB_RELOAD_WATCH", cls.watch, bool, 0)
        debounce = pick(gs.reload_debounce_ms, "AIB_RELOAD_DEBOUNCE_MS", cls.debounce_ms, int, 0)
        keep = pick(gs.backups_keep, "AIB_BACKUPS_KEEP", cls.backups_keep, int, 0)
        verify = pick(
            gs.reload_verify_timeout_s, "AIB_RELOAD_VERIFY_TIMEOUT_S", cls.verify_timeout_s, float, 0.1
        )
        raw_dir = e.get("AIB_BACKUPS_DIR", "").strip()
        backups_dir = gs.backups_dir if gs.backups_dir is not None else Path(raw_dir) if raw_dir else None
        if issues:
            raise ConfigError(issues)
        return cls(
            watch=bool(watch),
            debounce_ms=int(debounce),  # type: ignore[call-overload]
            backups_keep=int(keep),  # type: ignore[call-overload]
            backups_dir=backups_dir,
            verify_timeout_s=float(verify),  # type: ignore[arg-type]
        )
