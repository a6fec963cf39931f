"""One reload, start to end: read, validate, diff, back up, swap, verify, roll back or keep.

Everything up to the swap happens off the request path (parsing and compiling in a worker thread);
the swap itself is one reference per target. Reloads run one at a time. Every outcome is kept in a
short history (``GET /admin/reloads``), logged, and counted through ``gateway.on_reload``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aib.config.check import check_config
from aib.config.compile import compile_plan
from aib.config.errors import ConfigError, ConfigIssue
from aib.config.export_litellm import render_litellm
from aib.config.load import (
    GENERATED_FILE,
    MAPPINGS_FILE,
    PROVIDERS_FILE,
    LoadedConfig,
    display_name,
    load_from_bytes,
)
from aib.config.plan import RoutingPlan
from aib.gateway.app import Gateway
from aib.reload.backups import BackupError, BackupInfo, BackupStore, write_config_file
from aib.reload.diff import diff_plans, lines_of
from aib.reload.native import NativeTarget
from aib.reload.settings import ReloadSettings
from aib.reload.sources import Sources, from_bytes, read_sources
from aib.reload.target import Candidate, ReloadTarget, TargetError, Verdict

log = logging.getLogger("aib.reload")
HTTP_STATUS = {"applied": 200, "unchanged": 200, "rejected": 422, "rolled_back": 409, "failed": 500}


class NoConfigDir(Exception):
    """The gateway runs on the configuration shipped in the package: there is nothing to reload."""


@dataclass
class ReloadResult:
    id: int
    trigger: str  # watcher, SIGHUP, api, rollback
    by: str
    started_at: str
    from_version: str
    to_version: str | None = None  # the version the files on disk compile to (None: unreadable)
    version: str = ""  # in force afterwards
    result: str = "failed"  # applied, unchanged, rejected, rolled_back, failed
    message: str = ""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    diff: dict[str, Any] | None = None
    backup: str | None = None
    verify: dict[str, Any] | None = None
    generated: str | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result in ("applied", "unchanged")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidate_from(plan: RoutingPlan, cfg: LoadedConfig) -> Candidate:
    src = from_bytes(
        cfg.providers_doc.raw, cfg.mappings_doc.raw, (cfg.providers_doc.name, cfg.mappings_doc.name)
    )
    return Candidate(plan, cfg, src, render_litellm(cfg, plan))


class ReloadController:
    def __init__(
        self,
        gateway: Gateway,
        config_dir: Path | None,
        settings: ReloadSettings,
        targets: list[ReloadTarget] | None = None,
    ) -> None:
        self.gateway = gateway
        self.settings = settings
        self.config_dir = (
            config_dir.resolve() if config_dir is not None and gateway.config is not None else None
        )
        self.targets: list[ReloadTarget] = [NativeTarget(gateway), *(targets or [])]
        self.history: deque[ReloadResult] = deque(maxlen=settings.history)
        self.current: Candidate | None = None
        self.backups: BackupStore | None = None
        if self.config_dir is not None:
            assert gateway.config is not None
            self.current = candidate_from(gateway.base_plan, gateway.config)
            self.backups = BackupStore(
                settings.backups_dir or self.config_dir / "backups", settings.backups_keep
            )
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._rejected: object = None  # what the last rejected files were (version or read errors)
        # told the candidate in force after each applied reload (a leader worker publishes it)
        self.on_change: list[Callable[[Candidate], None]] = []

    # ------------------------------------------------------------------ entry points

    async def reload(
        self, trigger: str, by: str = "", sources: Sources | None = None, *, restore: bool = False
    ) -> ReloadResult:
        """Reload from the config folder, or from ``sources`` (with ``restore``, they replace the files)."""
        if self.config_dir is None or self.current is None:
            raise NoConfigDir(
                "this gateway runs on the configuration shipped in the package, so there is no config "
                "folder to reload from; start it with --config-dir DIR (or AIB_CONFIG_DIR)"
            )
        async with self._lock:
            return await self._run(trigger, by, sources, restore)

    async def rollback(self, ref: str | None, by: str = "") -> ReloadResult:
        """Restore a backup (by id, id prefix or hash; default the newest of another version) and reload.

        Raises :class:`BackupError` when there is no such backup or it cannot be read.
        """
        if self.backups is None or self.current is None:
            await self.reload("rollback", by)  # raises NoConfigDir
        assert self.backups is not None and self.current is not None
        info = await asyncio.to_thread(self.backups.find, ref, self.current.version)
        providers, mappings = await asyncio.to_thread(self.backups.read, info)
        folder = self.backups.root / info.id
        names = (display_name(folder / PROVIDERS_FILE), display_name(folder / MAPPINGS_FILE))
        src = from_bytes(providers, mappings, names)
        return await self.reload(
            "rollback", f"{by + ': ' if by else ''}to backup {info.id}", src, restore=True
        )

    async def follow(self, src: Sources) -> str:
        """A follower worker: put in force what the leader published (no backups, no verification:
        the leader did both). Returns what happened: ``applied``, ``unchanged`` or ``rejected``."""
        if self.current is None:
            return "unchanged"
        async with self._lock:
            old = self.current
            if src.version == old.version:
                return "unchanged"
            try:
                cand, _ = await asyncio.to_thread(self._prepare, src)
            except ConfigError as exc:  # cannot happen for what the leader applied; kept, said loudly
                log.error("cannot follow the leader to %s: %s", src.version, "; ".join(map(str, exc.errors)))
                return "rejected"
            started: list[ReloadTarget] = []
            try:
                for target in self.targets:
                    started.append(target)
                    await target.activate(cand)
            except Exception:
                log.exception("cannot follow the leader to %s; still serving %s", cand.version, old.version)
                await self._revert(started, old)
                return "rejected"
            self.current = cand
            log.info("following the leader: now serving %s (was %s)", cand.version, old.version)
            return "applied"

    async def files_settled(self, sources: Sources, changed: list[str]) -> ReloadResult | None:
        """The watcher's entry: reload once per distinct content it saw settle."""
        key = sources.version or tuple(str(i) for i in sources.issues)
        if key == self._rejected or self.config_dir is None:
            return None  # already reported (a touch, or an editor saving the same bad file again)
        what = " and ".join(changed) if changed else "config files"
        async with self._lock:
            # another reload may have run while this waited (and restored the files): only go on with
            # what the folder still holds; a newer change comes with its own event
            if await asyncio.to_thread(read_sources, self.config_dir) != sources:
                return None
            return await self._run("watcher", f"{what} changed", sources, False)

    # ------------------------------------------------------------------ the steps

    def _prepare(self, src: Sources) -> tuple[Candidate, list[ConfigIssue]]:
        """Load, check, compile and render (in a worker thread). Raises ConfigError."""
        assert src.providers is not None and src.mappings is not None
        cfg = replace(load_from_bytes(src.providers, src.mappings, src.names), config_dir=self.config_dir)
        issues = check_config(cfg)
        errors = [i for i in issues if i.severity == "error"]
        if errors:
            raise ConfigError(errors)
        plan = compile_plan(cfg, check=False)
        return Candidate(plan, cfg, src, render_litellm(cfg, plan)), [
            i for i in issues if i.severity == "warning"
        ]

    async def _run(self, trigger: str, by: str, given: Sources | None, restore: bool) -> ReloadResult:
        assert self.config_dir is not None and self.current is not None and self.backups is not None
        old = self.current
        t0 = time.perf_counter()
        res = ReloadResult(
            next(self._ids), trigger, by, datetime.now(UTC).isoformat(timespec="milliseconds"), old.version
        )
        res.version = old.version
        try:
            src = given if given is not None else await asyncio.to_thread(read_sources, self.config_dir)
            res.to_version = src.version
            if src.issues:
                res.errors = [str(i) for i in src.issues]
                return self._finish(
                    res, t0, "rejected", f"the config files cannot be read; still serving {old.version}"
                )
            if src.version == old.version:
                what = "those files are the version in force" if restore else "the files are unchanged"
                return self._finish(res, t0, "unchanged", f"{what}; serving {old.version}")
            try:
                cand, warnings = await asyncio.to_thread(self._prepare, src)
            except ConfigError as exc:
                res.errors = [str(i) for i in exc.errors]
                n = len(res.errors)
                msg = f"{n} error{'s' if n != 1 else ''} in the new files; still serving {old.version}"
                return self._finish(res, t0, "rejected", msg)
            res.warnings = [str(w) for w in warnings]
            diff = diff_plans(old.plan, cand.plan)
            res.diff = diff.as_dict()
            return await self._apply(res, t0, old, cand, restore, diff.summary())
        except Exception as exc:  # a bug: keep serving, say so, never take the loop down
            log.exception("reload %d failed unexpectedly", res.id)
            return self._finish(
                res, t0, "failed", f"internal error ({type(exc).__name__}); still serving {old.version}"
            )

    async def _apply(
        self, res: ReloadResult, t0: float, old: Candidate, cand: Candidate, write_files: bool, summary: str
    ) -> ReloadResult:
        assert self.backups is not None and self.config_dir is not None
        old_raw = (old.sources.providers or b"", old.sources.mappings or b"")
        try:
            backup = await asyncio.to_thread(
                self.backups.save,
                *old_raw,
                version=old.version,
                trigger=res.trigger,
                by=res.by,
                replaced_by=cand.version,
            )
        except BackupError as exc:
            return self._finish(res, t0, "failed", f"{exc}; nothing changed, still serving {old.version}")
        res.backup = backup.id if backup else None
        started: list[ReloadTarget] = []
        where = "could not write the files"
        try:
            if write_files:  # a rollback: the backup's files become the config files
                await asyncio.to_thread(self._write_files, cand.sources)
            for target in self.targets:
                where = f"{target.name} could not switch"
                started.append(target)
                await target.activate(cand)
        except Exception as exc:
            if not isinstance(exc, TargetError | OSError):
                log.exception("reload %d: %s", res.id, where)
            why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
            await self._revert(started, old)
            if write_files:
                await self._restore_files(old)
            self._mark(backup, "failed", f"{where}: {why}")
            return self._finish(res, t0, "failed", f"{where} ({why}); still serving {old.version}")
        verdict = Verdict()
        for target in self.targets:
            try:
                verdict.merge(await target.verify(cand, old, self.settings.verify_timeout_s))
            except Exception as exc:  # cannot tell whether it works: do not keep it
                log.exception("reload %d: verifying %s failed", res.id, target.name)
                verdict.problems.append(f"{target.name} could not be verified ({type(exc).__name__}: {exc})")
        res.verify = verdict.as_dict()
        if verdict.problems:
            return await self._roll_back(res, t0, old, cand, backup, verdict)
        self.current = cand
        res.version = cand.version
        try:
            if await asyncio.to_thread(self._write_generated, cand):
                res.generated = str(self.config_dir / GENERATED_FILE)
        except OSError as exc:
            res.warnings.append(f"could not regenerate {GENERATED_FILE}: {exc.strerror or exc}")
        self._mark(backup, "applied")
        for hook in self.on_change:
            try:
                hook(cand)
            except Exception:
                log.exception("reload %d: telling the other workers failed", res.id)
        return self._finish(res, t0, "applied", f"applied {cand.version} (was {old.version}): {summary}")

    async def _roll_back(
        self,
        res: ReloadResult,
        t0: float,
        old: Candidate,
        cand: Candidate,
        backup: BackupInfo | None,
        verdict: Verdict,
    ) -> ReloadResult:
        await self._revert(self.targets, old)
        why = "; ".join(verdict.problems)
        msg = f"rolled back to {old.version}: {why}"
        failed = await self._restore_files(old)
        if failed is not None:
            msg += f". Could not restore the files on disk ({failed}): they still hold the rejected version"
        elif backup is not None:
            msg += f". The rejected files are kept in {self.backups.root / backup.id / 'rolled-back'}"  # type: ignore[union-attr]
        else:
            msg += ". Backups are off (AIB_BACKUPS_KEEP=0): the rejected files were overwritten"
        self._mark(backup, "rolled_back", why, (cand.sources.providers or b"", cand.sources.mappings or b""))
        return self._finish(res, t0, "rolled_back", msg)

    # ------------------------------------------------------------------ helpers

    async def _revert(self, targets: list[ReloadTarget], old: Candidate) -> None:
        for t in reversed(targets):
            try:
                await t.revert(old)
            except Exception:  # keep reverting the others; this one says why in the log
                log.exception("%s could not go back to %s", t.name, old.version)

    async def _restore_files(self, old: Candidate) -> str | None:
        """Put the files of ``old`` back; the reason when that failed (logged too)."""
        try:
            await asyncio.to_thread(self._write_files, old.sources)
        except OSError as exc:
            log.warning("could not restore the config files of %s: %s", old.version, exc.strerror or exc)
            return exc.strerror or str(exc)
        return None

    def _write_files(self, src: Sources) -> None:
        assert self.config_dir is not None and src.providers is not None and src.mappings is not None
        write_config_file(self.config_dir / PROVIDERS_FILE, src.providers)
        write_config_file(self.config_dir / MAPPINGS_FILE, src.mappings)

    def _write_generated(self, cand: Candidate) -> bool:
        assert self.config_dir is not None
        path = self.config_dir / GENERATED_FILE
        try:
            if path.read_text(encoding="utf-8") == cand.litellm_yaml:
                return False
        except (OSError, UnicodeDecodeError):
            pass
        write_config_file(path, cand.litellm_yaml.encode("utf-8"))
        return True

    def _mark(
        self,
        backup: BackupInfo | None,
        result: str,
        reason: str | None = None,
        rejected: tuple[bytes, bytes] | None = None,
    ) -> None:
        if backup is not None and self.backups is not None:
            self.backups.mark(backup, result, reason, rejected)

    def _finish(self, res: ReloadResult, t0: float, result: str, message: str) -> ReloadResult:
        res.result, res.message = result, message
        if result == "rejected":
            self._rejected = res.to_version or tuple(res.errors)
        elif result in ("applied", "rolled_back"):
            self._rejected = None
        res.duration_ms = round((time.perf_counter() - t0) * 1000, 2)
        if result == "unchanged" and res.trigger == "watcher":
            return res  # our own writes (a restore, a rollback) come back as events: not worth a line
        self.history.append(res)
        head = f"reload #{res.id} ({res.trigger}{': ' + res.by if res.by else ''}): {result}: {message}"
        if result in ("applied", "unchanged"):
            log.info("%s%s", head, "".join(f"\n  {line}" for line in lines_of(res.diff or {})))
        else:
            log.warning("%s%s", head, "".join(f"\n  {e}" for e in res.errors))
        for w in res.warnings:
            log.warning("reload #%d: %s", res.id, w)
        if result != "unchanged":
            for hook in self.gateway.on_reload:
                try:
                    hook("success" if result == "applied" else "failure")
                except Exception:
                    log.exception("reload hook %r failed", hook)
        return res
