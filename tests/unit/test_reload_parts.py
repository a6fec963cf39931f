"""The pieces of hot reload on their own: settings, reading the files, the diff, backups, the watcher."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from aib.config.errors import ConfigError
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE, sources_hash
from aib.gateway.settings import GatewaySettings
from aib.reload.backups import BackupError, BackupStore, new_id
from aib.reload.diff import PlanDiff, diff_plans, lines_of
from aib.reload.settings import ReloadSettings
from aib.reload.sources import MAX_FILE_BYTES, Sources, read_sources
from aib.reload.watcher import ConfigWatcher
from config_support import write_files
from gateway_harness import plan_from_yaml
from reload_support import mappings_yaml, provider_yaml

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------- settings


def test_settings_defaults_env_and_explicit_values() -> None:
    assert ReloadSettings.resolve(GatewaySettings(), env={}) == ReloadSettings()
    env = {
        "AIB_RELOAD_WATCH": "off",
        "AIB_RELOAD_DEBOUNCE_MS": "250",
        "AIB_BACKUPS_KEEP": "3",
        "AIB_BACKUPS_DIR": "/tmp/b",
        "AIB_RELOAD_VERIFY_TIMEOUT_S": "1.5",
    }
    s = ReloadSettings.resolve(GatewaySettings(), env=env)
    assert (s.watch, s.debounce_ms, s.backups_keep, s.backups_dir, s.verify_timeout_s) == (
        False,
        250,
        3,
        Path("/tmp/b"),
        1.5,
    )
    explicit = GatewaySettings(
        watch_config=True, reload_debounce_ms=10, backups_keep=0, backups_dir=Path("x")
    )
    s = ReloadSettings.resolve(explicit, env=env)
    assert (s.watch, s.debounce_ms, s.backups_keep, s.backups_dir) == (True, 10, 0, Path("x"))


def test_bad_settings_are_config_errors_naming_the_variable() -> None:
    env = {"AIB_RELOAD_WATCH": "maybe", "AIB_BACKUPS_KEEP": "-1", "AIB_RELOAD_VERIFY_TIMEOUT_S": "soon"}
    with pytest.raises(ConfigError) as err:
        ReloadSettings.resolve(GatewaySettings(), env=env)
    assert [str(i) for i in err.value.issues] == [
        "environment: AIB_RELOAD_WATCH: expected on or off, got 'maybe'",
        "environment: AIB_BACKUPS_KEEP: expected a whole number >= 0, got '-1'",
        "environment: AIB_RELOAD_VERIFY_TIMEOUT_S: expected a number >= 0.1, got 'soon'",
    ]


# --------------------------------------------------------------------------- sources


def _files(d: Path, providers: str = "providers: {}\n", mappings: str = "models: {}\n") -> Path:
    return write_files(d, providers, mappings)


def test_read_sources(tmp_path: Path) -> None:
    d = _files(tmp_path / "c")
    src = read_sources(d)
    assert src.readable and not src.issues
    assert src.version == sources_hash(b"providers: {}\n", b"models: {}\n")
    assert src == read_sources(d)  # same bytes, size and mtime


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("deleted", "file not found (deleted or renamed?)"),
        ("directory", "is a directory, expected a YAML file"),
        ("fifo", "is not a regular file, expected a YAML file"),
        ("symlink-loop", "cannot read file: Too many levels of symbolic links"),
        ("huge", "larger than any config file should be"),
    ],
)
def test_unreadable_files_are_reported(tmp_path: Path, fault: str, message: str) -> None:
    d = _files(tmp_path / "c")
    path = d / PROVIDERS_FILE
    path.unlink()
    if fault == "directory":
        path.mkdir()
    elif fault == "fifo":
        os.mkfifo(path)
    elif fault == "symlink-loop":
        path.symlink_to(path.name)
    elif fault == "huge":
        path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    src = read_sources(d)
    assert not src.readable and src.version is None
    assert len(src.issues) == 1 and message in str(src.issues[0])
    assert str(src.issues[0]).startswith(str(path))


# --------------------------------------------------------------------------- diff


def test_diff_of_two_plans(tmp_path: Path) -> None:
    old, _ = plan_from_yaml(
        tmp_path / "a",
        provider_yaml({"pa": "http://127.0.0.1:1", "pb": "http://127.0.0.1:2"}, ("m", "n", "o")),
        "models:\n  m: {provider: pa, aliases: [mm]}\n  n: {provider: pa}\n  o: {provider: pb}\n"
        "patterns:\n  - {match: 'x/*', provider: pa}\n",
    )
    new, _ = plan_from_yaml(
        tmp_path / "b",
        provider_yaml({"pa": "http://127.0.0.1:9", "pc": "http://127.0.0.1:3"}, ("m", "n", "p")),
        "defaults: {strategy: weighted}\n"
        "models:\n  m: {provider: pc, critical: true, aliases: [mx]}\n  n: {provider: pa}\n  p: {provider: pc}\n",
    )
    d = diff_plans(old, new)
    assert (d.models_added, d.models_removed) == (["p"], ["o"])
    assert d.models_changed["m"] == [
        "targets: pa/m -> pc/m",
        "strategy: round_robin -> weighted",
        "critical: False -> True",
        "aliases: mm -> mx",
    ]
    assert d.models_changed["n"] == ["strategy: round_robin -> weighted"]
    assert (d.providers_added, d.providers_removed) == (["pc"], ["pb"])
    assert d.providers_changed["pa"][0] == "base_url: http://127.0.0.1:1 -> http://127.0.0.1:9"
    assert (d.aliases_added, d.aliases_removed) == (["mx -> m"], ["mm -> m"])
    assert "patterns: x/* -> (none)" in d.other and "defaults.strategy: round_robin -> weighted" in d.other
    assert d.changed_providers() == {"pa", "pc"}
    assert d.summary().startswith("models +p -o ~m ~n; providers +pc -pb ~pa; aliases +mx -> m -mm -> m")
    lines = lines_of(d.as_dict())
    assert "+ model p" in lines and "- provider pb" in lines and "~ model m: targets: pa/m -> pc/m" in lines
    assert "~ defaults.strategy: round_robin -> weighted" in lines
    same = diff_plans(old, old)
    assert same.empty and same.summary() == "no routing change" and PlanDiff().empty


def test_diff_shortens_long_values(tmp_path: Path) -> None:
    models = tuple(f"model-with-a-long-name-{i}" for i in range(12))
    old, _ = plan_from_yaml(
        tmp_path / "a", provider_yaml({"pa": "http://127.0.0.1:1"}, ("m",)), mappings_yaml({"m": "pa"})
    )
    new, _ = plan_from_yaml(
        tmp_path / "b",
        provider_yaml({"pa": "http://127.0.0.1:1"}, ("m", *models)),
        mappings_yaml({"m": "pa"}),
    )
    (change,) = [c for c in diff_plans(old, new).providers_changed["pa"] if c.startswith("models:")]
    assert change.endswith("...") and len(change) < 140


# --------------------------------------------------------------------------- backups


def _store(tmp_path: Path, keep: int = 20) -> BackupStore:
    return BackupStore(tmp_path / "backups", keep)


def _save(store: BackupStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        p, m = f"p{i}".encode(), f"m{i}".encode()
        info = store.save(p, m, version=sources_hash(p, m), trigger="api", by=f"test {i}", replaced_by="next")
        assert info is not None
        ids.append(info.id)
    return ids


def test_backups_are_written_listed_and_pruned(tmp_path: Path) -> None:
    store = _store(tmp_path, keep=3)
    ids = _save(store, 5)
    listed = store.list()
    assert [b.id for b in listed] == sorted(ids[2:], reverse=True)  # newest first, two pruned
    newest = listed[0]
    assert (newest.trigger, newest.by, newest.result, newest.replaced_by) == (
        "api",
        "test 4",
        "pending",
        "next",
    )
    assert store.read(newest) == (b"p4", b"m4")
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temporary folders left
    marked = store.mark(newest, "rolled_back", "because", rejected=(b"bad-p", b"bad-m"))
    assert marked.result == "rolled_back"
    assert store.list()[0].reason == "because"
    assert (store.root / newest.id / "rolled-back" / PROVIDERS_FILE).read_bytes() == b"bad-p"
    meta = json.loads((store.root / newest.id / "meta.json").read_text())
    assert meta["result"] == "rolled_back" and meta["hash"] == newest.hash


def test_same_millisecond_backups_get_distinct_folders(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = store.save(b"p", b"m", version="abcd", trigger="t", by="", replaced_by="x")
    assert first is not None
    (store.root / new_id("abcd")).mkdir(exist_ok=True)  # as if written this very millisecond
    second = store.save(b"p", b"m", version="abcd", trigger="t", by="", replaced_by="x")
    assert second is not None and second.id != first.id
    assert {b.id for b in store.list()} >= {first.id, second.id}


def test_find_by_id_prefix_and_hash(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ids = _save(store, 3)
    infos = {b.id: b for b in store.list()}
    assert store.find(ids[1]).id == ids[1]
    assert store.find(infos[ids[0]].hash[:6]).id == ids[0]
    assert store.find(None).id == ids[2]
    assert store.find(None, exclude_version=infos[ids[2]].hash).id == ids[1]  # default: another version
    with pytest.raises(BackupError, match="matches 3 backups"):
        store.find(ids[0][:4])
    with pytest.raises(BackupError, match=r"no backup 'zzzz'.*aib backups"):
        store.find("zzzz")


def test_backups_off_and_empty(tmp_path: Path) -> None:
    off = _store(tmp_path, keep=0)
    assert off.save(b"p", b"m", version="v", trigger="t", by="", replaced_by="x") is None
    assert off.list() == []
    with pytest.raises(BackupError, match="no backup to roll back to"):
        off.find(None)


def test_backup_folder_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "backups").write_text("a file where the folder should be")
    store = _store(tmp_path)
    with pytest.raises(BackupError, match="is a file, not a folder"):
        store.save(b"p", b"m", version="v", trigger="t", by="", replaced_by="x")
    nested = BackupStore(tmp_path / "backups" / "deeper", 5)
    with pytest.raises(BackupError, match=r"cannot write a backup in .*deeper: Not a directory"):
        nested.save(b"p", b"m", version="v", trigger="t", by="", replaced_by="x")
    with pytest.raises(BackupError, match="cannot list backups"):
        nested.list()


def test_damaged_backups_are_listed_not_fatal(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (a,) = _save(store, 1)
    (store.root / a / "meta.json").write_text("{not json")
    (store.root / "not-a-backup").mkdir()
    (listed,) = store.list()
    assert (listed.id, listed.result) == (a, "unreadable meta.json") and listed.hash == a.split("-")[1]
    (store.root / a / PROVIDERS_FILE).unlink()
    with pytest.raises(BackupError, match=f"cannot read backup {a}"):
        store.read(listed)


# --------------------------------------------------------------------------- watcher


async def _watch(d: Path, debounce_s: float, action: object, settle_s: float) -> list[Sources]:
    seen: list[Sources] = []

    async def on_settled(src: Sources, changed: list[str]) -> None:
        seen.append(src)

    watcher = ConfigWatcher(d, debounce_s, on_settled)
    watcher.start()
    try:
        await asyncio.sleep(0.1)  # the watch is in place
        await action()  # type: ignore[operator]
        await asyncio.sleep(settle_s)
    finally:
        await watcher.stop()
    return seen


async def test_watcher_hands_over_files_only_once_they_stopped_changing(tmp_path: Path) -> None:
    d = _files(tmp_path / "c")
    full = "models:\n" + "".join(f"  m{i}: {{provider: p}}\n" for i in range(8))

    def write_in_pieces() -> None:
        with open(d / MAPPINGS_FILE, "w") as fh:
            for i in range(0, len(full), 20):
                fh.write(full[i : i + 20])
                fh.flush()
                time.sleep(0.04)
        (d / "notes.txt").write_text("not a config file: ignored")

    async def pieces() -> None:
        await asyncio.to_thread(write_in_pieces)

    seen = await _watch(d, 0.3, pieces, 0.8)
    assert [s.mappings for s in seen] == [full.encode()]


async def test_watcher_sees_deletes_and_replacements(tmp_path: Path) -> None:
    d = _files(tmp_path / "c")

    async def delete() -> None:
        (d / PROVIDERS_FILE).unlink()

    seen = await _watch(d, 0.05, delete, 0.4)
    assert len(seen) == 1 and "file not found" in str(seen[0].issues[0])

    async def atomic_replace() -> None:
        tmp = d / ".providers.yaml.tmp"
        tmp.write_text("providers: {x: 1}\n")
        tmp.replace(d / PROVIDERS_FILE)

    seen = await _watch(d, 0.05, atomic_replace, 0.4)
    assert [s.providers for s in seen] == [b"providers: {x: 1}\n"]


async def test_watcher_survives_a_missing_folder_and_a_failing_callback(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    calls: list[Sources] = []

    async def on_settled(src: Sources, changed: list[str]) -> None:
        calls.append(src)
        raise RuntimeError("a bug in the reload")

    watcher = ConfigWatcher(missing, 0.05, on_settled)
    watcher.start()
    try:
        for _ in range(40):  # cannot watch yet: retries (after 0.5 s), and hands over what it can read
            if calls:
                break
            await asyncio.sleep(0.05)
        assert calls and calls[0].issues
        _files(missing)
        for _ in range(100):  # the retry (backoff 0.5 s, 1 s) finds the folder
            if any(c.readable for c in calls):
                break
            await asyncio.sleep(0.05)
        assert any(c.readable for c in calls)
        # the folder removed and made again (a deploy tool replacing it): the watch follows
        shutil.rmtree(missing)
        await asyncio.sleep(0.2)
        _files(missing, providers="providers: {again: 1}\n")
        for _ in range(100):
            if calls[-1].providers == b"providers: {again: 1}\n":
                break
            await asyncio.sleep(0.05)
        assert calls[-1].providers == b"providers: {again: 1}\n"
        assert watcher.running
    finally:
        await watcher.stop()
    assert not watcher.running


def test_backups_order_by_time_then_suffix_never_by_hash() -> None:
    from aib.reload.backups import age_order

    ids = [
        "20261126T052552.980Z-ffff",  # an id from the millisecond format
        "20261126T052552.980001Z-0000",
        "20261126T052552.980001Z-0000-2",
        "20261126T052552.981Z-aaaa",
    ]
    assert sorted(reversed(ids), key=age_order) == ids
