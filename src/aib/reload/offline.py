"""Backups and rollback without a running gateway (`aib backups`, `aib rollback --offline`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aib.config.compile import compile_plan
from aib.config.errors import ConfigError
from aib.config.export_litellm import render_litellm
from aib.config.load import GENERATED_FILE, MAPPINGS_FILE, PROVIDERS_FILE, display_name, load_from_bytes
from aib.gateway.settings import GatewaySettings
from aib.reload.backups import BackupInfo, BackupStore, write_config_file
from aib.reload.settings import ReloadSettings
from aib.reload.sources import read_sources


def store_for(config_dir: Path) -> BackupStore:
    """The backups of ``config_dir`` ($AIB_BACKUPS_DIR, else <config dir>/backups). Bad env: ConfigError."""
    rs = ReloadSettings.resolve(GatewaySettings())
    return BackupStore(rs.backups_dir or config_dir.resolve() / "backups", rs.backups_keep)


def pick_backup(store: BackupStore, config_dir: Path, ref: str | None) -> BackupInfo:
    """By id, id prefix or hash prefix; default the newest whose files differ from those in the folder."""
    return store.find(ref, read_sources(config_dir).version)


def restore_offline(store: BackupStore, config_dir: Path, info: BackupInfo, by: str) -> dict[str, Any]:
    """Check the backup still validates (ConfigError if not), back up the files there, write it back.

    Raises :class:`~aib.reload.backups.BackupError` when a backup cannot be read or written, OSError
    when the config files cannot be written.
    """
    providers, mappings = store.read(info)
    folder = store.root / info.id
    names = (display_name(folder / PROVIDERS_FILE), display_name(folder / MAPPINGS_FILE))
    cfg = load_from_bytes(providers, mappings, names)
    plan = compile_plan(cfg)  # raises ConfigError with every error
    current = read_sources(config_dir)
    saved = None
    if current.providers is not None and current.mappings is not None and current.version != info.hash:
        saved = store.save(
            current.providers,
            current.mappings,
            version=current.version or "",
            trigger="rollback",
            by=f"{by}: to backup {info.id}",
            replaced_by=info.hash,
        )
    write_config_file(config_dir / PROVIDERS_FILE, providers)
    write_config_file(config_dir / MAPPINGS_FILE, mappings)
    write_config_file(config_dir / GENERATED_FILE, render_litellm(cfg, plan).encode("utf-8"))
    if saved is not None:
        store.mark(saved, "applied")
    return {
        "restored": info.id,
        "version": info.hash,
        "backup": saved.id if saved else None,
        "config_dir": str(config_dir),
    }


__all__ = ["ConfigError", "pick_backup", "restore_offline", "store_for"]
