"""Backups of the config files, one folder per reload: ``<backups dir>/<UTC time>-<hash>/``.

Each folder holds the two files as they were before the reload (the bytes the replaced plan was built
from) and ``meta.json`` (when, what triggered it, who, the result). A reload that was rolled back also
keeps the rejected files in ``rolled-back/`` so an operator's edit is never lost. Only the newest
``keep`` folders are kept. Folders appear whole (written under a dot-name, then renamed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE

log = logging.getLogger("aib.reload")
META = "meta.json"
REJECTED = "rolled-back"
ID_RE = re.compile(r"^\d{8}T\d{6}\.\d{3}(\d{3})?Z-[0-9a-f]+(-\d+)?$")


class BackupError(Exception):
    """A backup could not be written or read; the message says where and why."""


@dataclass(frozen=True)
class BackupInfo:
    id: str
    created_at: str  # ISO 8601, UTC
    hash: str  # plan version of the files in this backup
    trigger: str  # watcher, SIGHUP, api, rollback, ...
    by: str  # who or what, in words
    result: str  # pending, applied, rolled_back, failed
    replaced_by: str | None = None  # the version that replaced these files
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_id(version: str, now: datetime | None = None) -> str:
    t = now or datetime.now(UTC)
    return f"{t:%Y%m%dT%H%M%S}.{t.microsecond:06d}Z-{version}"


def age_order(backup_id: str) -> tuple[str, int]:
    """Sort key, oldest first: the time (ms ids of older versions padded to µs), then the collision
    suffix; never the config hash, which says nothing about which backup came first."""
    stamp, _, rest = backup_id.partition("Z-")
    date, _, frac = stamp.partition(".")
    suffix = rest.rsplit("-", 1)[1] if rest.count("-") == 1 else "0"
    return (f"{date}.{frac:0<6}", int(suffix) if suffix.isdigit() else 0)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _hash_of(backup_id: str) -> str:
    return backup_id.split("-")[1]


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class BackupStore:
    def __init__(self, root: Path, keep: int = 20) -> None:
        self.root = root
        self.keep = keep

    def save(
        self, providers: bytes, mappings: bytes, *, version: str, trigger: str, by: str, replaced_by: str
    ) -> BackupInfo | None:
        """Write a backup folder and prune old ones. None when backups are off (keep 0)."""
        if self.keep <= 0:
            return None
        bid = new_id(version)
        info = BackupInfo(
            bid,
            datetime.now(UTC).isoformat(timespec="milliseconds"),
            version,
            trigger,
            by,
            "pending",
            replaced_by,
        )
        tmp = self.root / f".tmp-{bid}-{os.getpid()}"
        try:
            if self.root.exists() and not self.root.is_dir():
                raise BackupError(f"cannot write a backup: {self.root} is a file, not a folder")
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            (tmp / PROVIDERS_FILE).write_bytes(providers)
            (tmp / MAPPINGS_FILE).write_bytes(mappings)
            (tmp / META).write_bytes(orjson.dumps(info.as_dict(), option=orjson.OPT_INDENT_2))
            n = 1
            final = self.root / bid
            while final.exists():
                n += 1
                final = self.root / f"{bid}-{n}"
            tmp.rename(final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            raise BackupError(f"cannot write a backup in {self.root}: {_why(exc)}") from None
        info = replace(info, id=final.name)
        if final.name != bid:
            self._write_meta(info)
        self.prune()
        return info

    def mark(
        self,
        info: BackupInfo,
        result: str,
        reason: str | None = None,
        rejected: tuple[bytes, bytes] | None = None,
    ) -> BackupInfo:
        """Record the reload's result in the backup (and keep rejected files); problems are logged only."""
        info = replace(info, result=result, reason=reason)
        try:
            if rejected is not None:
                folder = self.root / info.id / REJECTED
                folder.mkdir(exist_ok=True)
                (folder / PROVIDERS_FILE).write_bytes(rejected[0])
                (folder / MAPPINGS_FILE).write_bytes(rejected[1])
            self._write_meta(info)
        except OSError as exc:
            log.warning("could not update backup %s: %s", info.id, _why(exc))
        return info

    def _write_meta(self, info: BackupInfo) -> None:
        _write(self.root / info.id / META, orjson.dumps(info.as_dict(), option=orjson.OPT_INDENT_2))

    def list(self) -> list[BackupInfo]:
        """Every backup, newest first. Folders that are not backups are ignored."""
        try:
            names = [p.name for p in self.root.iterdir() if ID_RE.match(p.name) and p.is_dir()]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackupError(f"cannot list backups in {self.root}: {_why(exc)}") from None
        out = []
        for name in sorted(names, key=age_order, reverse=True):
            try:
                meta = orjson.loads((self.root / name / META).read_bytes())
                if not isinstance(meta, dict):
                    raise TypeError
                out.append(
                    BackupInfo(
                        id=name,
                        created_at=str(meta.get("created_at") or "?"),
                        hash=str(meta.get("hash") or _hash_of(name)),
                        trigger=str(meta.get("trigger") or "?"),
                        by=str(meta.get("by") or ""),
                        result=str(meta.get("result") or "?"),
                        replaced_by=meta.get("replaced_by"),
                        reason=meta.get("reason"),
                    )
                )
            except (OSError, orjson.JSONDecodeError, TypeError):
                out.append(BackupInfo(name, "?", _hash_of(name), "?", "", "unreadable meta.json"))
        return out

    def find(self, ref: str | None, exclude_version: str | None = None) -> BackupInfo:
        """A backup by id, id prefix or hash prefix; with no ``ref`` the newest not at ``exclude_version``."""
        items = self.list()
        if ref is None:
            for b in items:
                if b.hash != exclude_version:
                    return b
            raise BackupError(
                f"no backup to roll back to in {self.root}"
                + (" (every backup holds the files in use now)" if items else "")
            )
        ref = ref.strip()
        exact = [b for b in items if b.id == ref]
        if exact:
            return exact[0]
        by_id = [b for b in items if b.id.startswith(ref)]
        by_hash = [b for b in items if len(ref) >= 4 and b.hash.startswith(ref)]
        hits = by_id or by_hash
        if len({b.id for b in by_id}) > 1:
            raise BackupError(
                f"{ref!r} matches {len(by_id)} backups; give more of the id ({', '.join(b.id for b in by_id[:3])} ...)"
            )
        if hits:
            return hits[0]  # by hash: the newest backup of those files
        known = ", ".join(b.id for b in items[:5]) or "none yet"
        raise BackupError(f"no backup {ref!r} in {self.root} (newest: {known}; `aib backups` lists them)")

    def read(self, info: BackupInfo) -> tuple[bytes, bytes]:
        folder = self.root / info.id
        try:
            return (folder / PROVIDERS_FILE).read_bytes(), (folder / MAPPINGS_FILE).read_bytes()
        except OSError as exc:
            raise BackupError(f"cannot read backup {info.id}: {_why(exc)}") from None

    def prune(self) -> None:
        try:
            names = sorted(
                (p.name for p in self.root.iterdir() if ID_RE.match(p.name) and p.is_dir()), key=age_order
            )
        except OSError:
            return
        for name in names[: max(len(names) - self.keep, 0)]:
            try:
                shutil.rmtree(self.root / name)
            except OSError as exc:
                log.warning("could not remove old backup %s: %s", name, _why(exc))


def write_config_file(path: Path, data: bytes) -> None:
    """Replace a config file in one rename (a watcher never sees it half-written)."""
    _write(path, data)
