"""The reload controller on a gateway object (no server): every outcome, every fault, rollback.

Bad input and faults from the issue: a syntax error, a schema error, a file deleted, a file replaced by
a directory, an unreadable file, a backups folder that cannot be written. In each the gateway keeps the
old plan and the report says why. Health checks are off here (no probes): the integration tests cover
verification against real servers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from aib.config.compile import build_plan
from aib.config.export_litellm import render_litellm
from aib.config.load import GENERATED_FILE, MAPPINGS_FILE, PROVIDERS_FILE
from aib.gateway.app import Gateway, create_app
from aib.reload import (
    Candidate,
    NoConfigDir,
    ReloadController,
    ReloadSettings,
    TargetError,
    Verdict,
    install_reload,
)
from aib.reload.backups import BackupError
from aib.reload.sources import read_sources
from gateway_harness import gateway_settings
from reload_support import mappings_yaml, provider_yaml, version_of, write

pytestmark = pytest.mark.unit

P1 = provider_yaml({"pa": "http://127.0.0.1:9"}, ("m", "n"))
M1 = mappings_yaml({"m": "pa"})
M2 = mappings_yaml({"m": "pa", "n": "pa"})


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    write(d, P1, M1)
    return d


def make(
    cdir: Path | None, targets: list[Any] | None = None, **settings: Any
) -> tuple[Gateway, ReloadController, list[str]]:
    plan, cfg, _ = build_plan(cdir)
    gw = create_app(plan, gateway_settings(), cfg)
    counted: list[str] = []
    gw.on_reload.append(counted.append)
    ctl = ReloadController(gw, cdir, ReloadSettings(**settings), targets)
    return gw, ctl, counted


async def test_applied_reload_swaps_backs_up_and_regenerates(cdir: Path) -> None:
    gw, ctl, counted = make(cdir)
    old = gw.plan.version
    new = write(cdir, mappings=M2)
    res = await ctl.reload("api", "tester")
    assert (res.result, res.ok, res.from_version, res.to_version, res.version) == (
        "applied",
        True,
        old,
        new,
        new,
    )
    assert gw.plan.version == new and gw.config is not None and ctl.current is not None
    assert ctl.current.version == new
    assert res.diff is not None and res.diff["models"]["added"] == ["n"]
    assert res.message == f"applied {new} (was {old}): models +n; capability/chat: m -> m, n"
    assert ctl.backups is not None
    (backup,) = ctl.backups.list()
    assert (backup.id, backup.hash, backup.result, backup.replaced_by) == (res.backup, old, "applied", new)
    assert ctl.backups.read(backup) == (P1.encode(), M1.encode())
    assert ctl.config_dir is not None and res.generated == str(ctl.config_dir / GENERATED_FILE)
    assert (cdir / GENERATED_FILE).read_text() == render_litellm(gw.config, gw.base_plan)
    assert counted == ["success"] and list(ctl.history) == [res]
    again = await ctl.reload("SIGHUP", "signal")
    assert (again.result, again.ok, again.version) == ("unchanged", True, new)
    assert counted == ["success"]  # nothing happened: not counted
    assert len(ctl.history) == 2


def _fault(cdir: Path, fault: str) -> str:
    p, m = cdir / PROVIDERS_FILE, cdir / MAPPINGS_FILE
    if fault == "syntax":
        m.write_text("models:\n  m: {provider: pa\n")
        return f"{m}:2: YAML syntax error"
    if fault == "schema":
        m.write_text("models:\n  m: {provider: pa, wieght: 2}\n")
        return f"{m}:2: models.m.wieght: unknown key"
    if fault == "cross-file":
        m.write_text("models:\n  m: {provider: nowhere}\n")
        return f"{m}:2: models.m.provider: unknown provider 'nowhere'"
    if fault == "deleted":
        p.unlink()
        return f"{p}: file not found"
    if fault == "directory":
        p.unlink()
        p.mkdir()
        return f"{p}: is a directory"
    if fault == "unreadable":
        p.unlink()
        p.symlink_to(p.name)  # chmod 000 does not stop root: a symlink loop cannot be read by anyone
        return f"{p}: cannot read file: Too many levels of symbolic links"
    if fault == "not-utf8":
        p.write_bytes(b"providers:\n  \xff\xfe: 1\n")
        return f"{p}: not UTF-8 text"
    raise AssertionError(fault)


@pytest.mark.parametrize(
    "fault", ["syntax", "schema", "cross-file", "deleted", "directory", "unreadable", "not-utf8"]
)
async def test_bad_files_are_rejected_and_the_old_plan_stays(cdir: Path, fault: str) -> None:
    gw, ctl, counted = make(cdir)
    old = gw.plan
    expected = _fault(cdir, fault)
    res = await ctl.reload("api")
    assert res.result == "rejected" and not res.ok
    assert gw.plan is old and res.version == old.version
    assert any(e.startswith(expected) for e in res.errors), res.errors
    assert f"still serving {old.version}" in res.message
    assert counted == ["failure"]
    assert ctl.backups is not None and ctl.backups.list() == []  # nothing was backed up: nothing changed


async def test_backups_folder_that_cannot_be_written_fails_the_reload(cdir: Path) -> None:
    (cdir / "backups").write_text("in the way")
    gw, ctl, counted = make(cdir)
    old = gw.plan
    write(cdir, mappings=M2)
    res = await ctl.reload("api")
    assert res.result == "failed" and gw.plan is old
    assert "is a file, not a folder; nothing changed, still serving" in res.message
    assert counted == ["failure"]
    assert not (cdir / GENERATED_FILE).exists()


async def test_backups_off_and_a_generated_file_that_cannot_be_written(cdir: Path) -> None:
    (cdir / GENERATED_FILE).mkdir()
    gw, ctl, _ = make(cdir, backups_keep=0)
    new = write(cdir, mappings=M2)
    res = await ctl.reload("api")
    assert res.result == "applied" and gw.plan.version == new and res.backup is None
    assert res.generated is None
    assert res.warnings == [f"could not regenerate {GENERATED_FILE}: Is a directory"]
    assert not (cdir / "backups").exists()


async def test_without_a_config_dir_there_is_nothing_to_reload(cdir: Path) -> None:
    plan, _, _ = build_plan(cdir)
    bare = ReloadController(create_app(plan, gateway_settings()), cdir, ReloadSettings())  # no loaded config
    for c in (bare, ReloadController(create_app(plan, gateway_settings()), None, ReloadSettings())):
        assert c.config_dir is None and c.backups is None
        with pytest.raises(NoConfigDir, match="no config folder to reload from"):
            await c.reload("api")
        with pytest.raises(NoConfigDir):
            await c.rollback(None)
        assert await c.files_settled(read_sources(cdir), []) is None


class FakeTarget:
    """A second reload target (what the LiteLLM supervisor will be), scripted to fail on demand."""

    name = "fake engine"

    def __init__(
        self,
        fail_activate: bool = False,
        problems: list[str] | None = None,
        crash: bool = False,
        bug: bool = False,
        revert_fails: bool = False,
    ) -> None:
        self.fail_activate = fail_activate
        self.problems = problems or []
        self.crash = crash
        self.bug = bug
        self.revert_fails = revert_fails
        self.serving: list[str] = []

    async def activate(self, candidate: Candidate) -> None:
        if self.fail_activate:
            raise TargetError("the new process did not become ready in 60 s")
        if self.bug:
            raise KeyError("port")
        assert candidate.litellm_yaml.startswith("#")
        self.serving.append(candidate.version)

    async def verify(self, candidate: Candidate, previous: Candidate, timeout_s: float) -> Verdict:
        if self.crash:
            raise RuntimeError("verifier bug")
        return Verdict(problems=list(self.problems), notes=["fake verified"])

    async def revert(self, previous: Candidate) -> None:
        if self.revert_fails:
            raise RuntimeError("the old process is gone")
        self.serving.append(f"back to {previous.version}")


async def test_a_target_that_cannot_switch_leaves_everything_as_it_was(cdir: Path) -> None:
    fake = FakeTarget(fail_activate=True)
    gw, ctl, counted = make(cdir, [fake])
    old = gw.plan.version
    write(cdir, mappings=M2)
    res = await ctl.reload("api")
    assert res.result == "failed" and gw.plan.version == old and gw.base_plan.version == old
    assert (
        res.message
        == f"fake engine could not switch (the new process did not become ready in 60 s); still serving {old}"
    )
    assert fake.serving == [f"back to {old}"]
    assert ctl.backups is not None and ctl.backups.list()[0].result == "failed"
    assert counted == ["failure"]


@pytest.mark.parametrize("crash", [False, True])
async def test_failed_verification_rolls_back_plan_and_files(cdir: Path, crash: bool) -> None:
    fake = FakeTarget(problems=["the new engine answers 500"], crash=crash)
    gw, ctl, counted = make(cdir, [fake])
    old = gw.plan.version
    new = write(cdir, mappings=M2)
    res = await ctl.reload("watcher", "model-mappings.yaml changed")
    why = (
        "fake engine could not be verified (RuntimeError: verifier bug)"
        if crash
        else "the new engine answers 500"
    )
    assert res.result == "rolled_back" and res.message.startswith(
        f"rolled back to {old}: {why}. The rejected files"
    )
    assert gw.plan.version == old and res.version == old and res.to_version == new
    assert version_of(cdir) == old  # the files hold the old version again
    assert fake.serving == [new, f"back to {old}"]
    assert ctl.backups is not None
    (b,) = ctl.backups.list()
    assert (b.result, b.reason) == ("rolled_back", why)
    assert (ctl.backups.root / b.id / "rolled-back" / MAPPINGS_FILE).read_text() == M2
    assert not (cdir / GENERATED_FILE).exists()  # only accepted versions are exported
    assert counted == ["failure"]
    if not crash:
        assert res.verify == {"problems": [why], "notes": ["fake verified"], "probes": {}}


async def test_rollback_without_backups_says_the_files_were_overwritten(cdir: Path) -> None:
    _, ctl, _ = make(cdir, [FakeTarget(problems=["no"])], backups_keep=0)
    write(cdir, mappings=M2)
    res = await ctl.reload("api")
    assert res.result == "rolled_back" and "Backups are off (AIB_BACKUPS_KEEP=0)" in res.message


async def test_internal_errors_are_reported_not_raised(cdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw, ctl, counted = make(cdir)
    old = gw.plan

    def boom(*a: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(ctl, "_prepare", boom)
    write(cdir, mappings=M2)
    res = await ctl.reload("api")
    assert (res.result, res.message) == (
        "failed",
        f"internal error (RuntimeError); still serving {old.version}",
    )
    assert gw.plan is old and counted == ["failure"]


async def test_rollback_restores_a_backup(cdir: Path) -> None:
    gw, ctl, _ = make(cdir)
    v1 = gw.plan.version
    v2 = write(cdir, mappings=M2)
    assert (await ctl.reload("api")).result == "applied"
    res = await ctl.rollback(None, "tester")
    assert (res.result, res.trigger, res.version) == ("applied", "rollback", v1)
    assert res.by.startswith("tester: to backup ") and version_of(cdir) == v1 and gw.plan.version == v1
    assert ctl.backups is not None
    newest = ctl.backups.list()[0]
    assert (newest.hash, newest.replaced_by) == (v2, v1)  # the rollback itself can be undone
    undo = await ctl.rollback(newest.id)
    assert undo.result == "applied" and gw.plan.version == v2 and version_of(cdir) == v2
    same = await ctl.rollback(v2[:8])
    assert same.result == "unchanged" and "those files are the version in force" in same.message
    with pytest.raises(BackupError, match="no backup 'ffffffff'"):
        await ctl.rollback("ffffffff")


async def test_rollback_to_a_backup_that_no_longer_validates(cdir: Path) -> None:
    gw, ctl, _ = make(cdir)
    write(cdir, mappings=M2)
    await ctl.reload("api")
    assert ctl.backups is not None
    b = ctl.backups.list()[0]
    (ctl.backups.root / b.id / MAPPINGS_FILE).write_text("models: [\n")
    res = await ctl.rollback(b.id)
    assert res.result == "rejected" and res.errors[0].startswith(
        f"{ctl.backups.root / b.id / MAPPINGS_FILE}:"
    )
    assert version_of(cdir) == gw.plan.version  # the config files were not touched


async def test_rollback_that_cannot_write_the_files(cdir: Path) -> None:
    gw, ctl, _ = make(cdir)
    v2 = write(cdir, mappings=M2)
    await ctl.reload("api")
    (cdir / PROVIDERS_FILE).unlink()
    (cdir / PROVIDERS_FILE).mkdir()
    res = await ctl.rollback(None)
    assert res.result == "failed" and res.message.startswith("could not write the files (")
    assert gw.plan.version == v2


async def test_watcher_entry_reports_a_bad_file_once(cdir: Path) -> None:
    _, ctl, counted = make(cdir)
    _fault(cdir, "syntax")
    src = read_sources(cdir)
    first = await ctl.files_settled(src, ["model-mappings.yaml"])
    assert first is not None and first.result == "rejected" and first.by == "model-mappings.yaml changed"
    assert await ctl.files_settled(read_sources(cdir), []) is None  # touched, same content: reported already
    write(cdir, mappings=M1)
    stale = read_sources(cdir)
    write(cdir, mappings=M2)  # changed again before the reload ran: skipped, the newer change comes
    assert await ctl.files_settled(stale, []) is None
    res = await ctl.files_settled(read_sources(cdir), [])
    assert res is not None and res.result == "applied" and res.by == "config files changed"
    shutil.copy(cdir / MAPPINGS_FILE, cdir / "copy")  # unchanged after an applied reload: not recorded
    assert (await ctl.files_settled(read_sources(cdir), [])).result == "unchanged"  # type: ignore[union-attr]
    assert [r.result for r in ctl.history] == ["rejected", "applied"]
    assert counted == ["failure", "success"]


async def test_bugs_in_targets_and_hooks_do_not_break_a_reload(cdir: Path) -> None:
    gw, ctl, counted = make(cdir, [FakeTarget(bug=True)])

    def broken_hook(result: str) -> None:
        raise ValueError("metrics are down")

    gw.on_reload.insert(0, broken_hook)
    old = gw.plan.version
    write(cdir, mappings=M2)
    res = await ctl.reload("api")
    assert (
        res.result == "failed"
        and res.message == f"fake engine could not switch ('port'); still serving {old}"
    )
    assert gw.plan.version == old and counted == ["failure"]  # the hook after the broken one still ran
    # a target that cannot go back does not stop the others from going back
    gw, ctl, _ = make(cdir, [FakeTarget(problems=["bad"], revert_fails=True)])
    old = gw.plan.version
    write(cdir, mappings=M1)
    res = await ctl.reload("api")
    assert res.result == "rolled_back" and gw.plan.version == old


async def test_criticals_are_not_verified_without_health_checks(cdir: Path) -> None:
    _, ctl, _ = make(cdir)
    write(cdir, mappings=mappings_yaml({"m": "pa"}, critical=True))
    res = await ctl.reload("api")
    assert res.result == "applied" and res.verify is not None
    assert res.verify["notes"] == [
        "health checks are off: new providers not probed, critical models not verified"
    ]


async def test_sighup_reloads(cdir: Path) -> None:
    plan, cfg, _ = build_plan(cdir)
    gw = create_app(plan, gateway_settings(watch_config=False), cfg)
    service = install_reload(gw, cdir)
    await service.start()  # pytest runs this loop in the main thread: the handler can be installed
    try:
        assert service._sighup and service.watcher is None
        new = write(cdir, mappings=M2)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(500):
            if service.controller.history:
                break
            await asyncio.sleep(0.01)
        assert gw.plan.version == new
        assert [(r.trigger, r.by, r.result) for r in service.controller.history] == [
            ("SIGHUP", "signal", "applied")
        ]
    finally:
        await service.stop()
    assert not service._sighup
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
