"""Hot reload under load: no request fails, each is served by the plan in force when it started.

The gateway runs in-process (``running_gateway``) with the reload service installed on a config folder
in ``tmp_path``; upstreams are two ``fake_openai`` processes (streams last ~100 ms, so requests are in
flight across every swap). Load: 32 concurrent clients for at most 10 s (the shared 2-core machine
cannot take the issue's 20 s next to other test runs; 20 reloads fit in about 6 s).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE
from gateway_harness import FakeOpenAIProcess, dead_url, fake_openai_process, wait_until
from reload_support import (
    LoadGenerator,
    mappings_yaml,
    provider_yaml,
    reloading_gateway,
    version_of,
    wait_for_reload,
    write,
)

pytestmark = pytest.mark.integration

RELOADS = 20


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAIProcess, FakeOpenAIProcess]]:
    with (
        fake_openai_process("--chunks", "5", "--chunk-delay-ms", "20") as a,
        fake_openai_process("--chunks", "5", "--chunk-delay-ms", "20") as b,
    ):
        yield a, b


def _configs(
    tmp_path: Path, a: FakeOpenAIProcess, b: FakeOpenAIProcess, same_name: bool = False
) -> list[tuple[str, str, str]]:
    """Two valid configs: ``m`` on upstream A, then on upstream B -> [(providers, mappings, provider)]."""
    if same_name:  # one provider whose address changes
        return [
            (provider_yaml({"up": a.base_url}), mappings_yaml({"m": "up"}), "up"),
            (provider_yaml({"up": b.base_url}), mappings_yaml({"m": "up"}), "up"),
        ]
    return [
        (provider_yaml({"pa": a.base_url}), mappings_yaml({"m": "pa"}), "pa"),
        (provider_yaml({"pb": b.base_url}), mappings_yaml({"m": "pb"}), "pb"),
    ]


@pytest.mark.parametrize("same_name", [False, True], ids=["provider-replaced", "provider-address-changed"])
def test_twenty_reloads_under_load_lose_nothing(
    tmp_path: Path, upstreams: tuple[FakeOpenAIProcess, FakeOpenAIProcess], same_name: bool
) -> None:
    configs = _configs(tmp_path, *upstreams, same_name=same_name)
    cdir = tmp_path / "config"
    cdir.mkdir()
    expected: dict[str, str] = {}  # plan version -> provider that must serve it
    for p, m, prov in configs:
        expected[write(cdir, p, m)] = prov
    write(cdir, configs[0][0], configs[0][1])
    swaps: list[tuple[float, str]] = []  # when the test saw each new version serving
    with reloading_gateway(cdir) as (rg, service), LoadGenerator(rg.base_url, max_s=10) as load:
        for i in range(1, RELOADS + 1):
            p, m, _ = configs[i % 2]
            version = write(cdir, p, m)
            if i % 4 == 0:  # every 4th through the API (the watcher then finds nothing new)
                httpx.post(f"{rg.base_url}/admin/reload", json={"by": "test"}, timeout=10)
            wait_until(lambda v=version: rg.gateway.base_plan.version == v, 5.0, what=f"reload {i}")
            swaps.append((time.monotonic(), version))
            before = len(load.outcomes)
            wait_until(lambda b=before: len(load.outcomes) >= b + 20, 5.0, what="traffic on the new plan")
    applied = [r for r in service.controller.history if r.result == "applied"]
    assert len(applied) == RELOADS, [(r.trigger, r.result, r.message) for r in service.controller.history]
    # a watcher reload that is not applied may only be the rejection of a file caught mid-write: the
    # writes here truncate, then write (an editor without atomic save), and on a busy machine the
    # pause between the two can outlast the 100 ms quiet window; the half-written file is refused
    # and the complete one applied with the next event (never a rollback, never a lost request)
    others = [r for r in service.controller.history if r.result != "applied" and r.trigger != "api"]
    assert all(r.result == "rejected" for r in others), [(r.result, r.message) for r in others]
    assert load.failures == [], load.failures[:5]
    assert len(load.outcomes) > 500
    by_version: Counter[str] = Counter()
    for out in load.outcomes:
        rec = rg.observer.wait_for(out.request_id)
        assert rec.plan_version in expected, rec.plan_version
        assert rec.provider == expected[rec.plan_version] == out.provider, (rec.request_id, rec.plan_version)
        by_version[rec.plan_version] += 1
    assert len(by_version) == 2 and min(by_version.values()) > 100, by_version
    assert sum(o.stream for o in load.outcomes) > 50
    # requests in flight across a swap finished on the plan they started with (checked above for all)
    spanning = [
        o
        for o in load.outcomes
        for seen, version in swaps
        if o.started < seen - 0.05 < seen < o.started + o.seconds
        and rg.observer.wait_for(o.request_id).plan_version != version
    ]
    assert len(spanning) >= 10, len(spanning)


def test_invalid_config_mid_load_is_rejected(
    tmp_path: Path, upstreams: tuple[FakeOpenAIProcess, FakeOpenAIProcess]
) -> None:
    a, _ = upstreams
    cdir = tmp_path / "config"
    cdir.mkdir()
    good = write(cdir, provider_yaml({"pa": a.base_url}), mappings_yaml({"m": "pa"}))
    counted: list[str] = []
    with reloading_gateway(cdir) as (rg, service), LoadGenerator(rg.base_url, max_s=10) as load:
        rg.gateway.on_reload.append(counted.append)
        write(cdir, mappings="models:\n  m: {provider: pa, max_attempts: lots}\n")
        res = wait_for_reload(service, lambda r: r.result == "rejected", what="the rejection")
        before = len(load.outcomes)
        wait_until(lambda: len(load.outcomes) >= before + 200, 5.0, what="traffic after the rejection")
        assert rg.gateway.plan.version == good
    assert load.failures == [], load.failures[:5]
    assert len(res.errors) == 1 and res.errors[0].startswith(
        f"{cdir / MAPPINGS_FILE}:2: models.m.max_attempts: "
    )
    assert "(got 'lots')" in res.errors[0]
    assert res.trigger == "watcher" and "model-mappings.yaml changed" in res.by
    assert counted == ["failure"]
    assert {o.provider for o in load.outcomes} == {"pa"}


def test_dead_critical_provider_is_rolled_back(
    tmp_path: Path, upstreams: tuple[FakeOpenAIProcess, FakeOpenAIProcess]
) -> None:
    a, _ = upstreams
    cdir = tmp_path / "config"
    cdir.mkdir()
    good_p, good_m = provider_yaml({"pa": a.base_url}), mappings_yaml({"m": "pa"}, critical=True)
    good = write(cdir, good_p, good_m)
    dead_p = provider_yaml({"pdead": dead_url()}, **{"health": "{timeout_s: 1}"})
    dead_m = mappings_yaml({"m": "pdead"}, critical=True)
    counted: list[str] = []
    with reloading_gateway(cdir, health_checks=True) as (rg, service):
        rg.wait_first_probe()
        rg.gateway.on_reload.append(counted.append)
        bad = write(cdir, dead_p, dead_m)
        res = wait_for_reload(service, lambda r: r.result == "rolled_back", what="the rollback")
        assert rg.gateway.plan.version == good
        assert res.to_version == bad and res.version == good
        assert "critical model 'm' has no healthy deployment" in res.message
        assert res.verify is not None and res.verify["probes"]["pdead"].startswith("down")
        # the files on disk are the good ones again; the rejected ones are kept with the backup
        wait_until(lambda: version_of(cdir) == good, what="the files restored")
        kept = service.controller.backups.root / str(res.backup) / "rolled-back"  # type: ignore[union-attr]
        assert (kept / PROVIDERS_FILE).read_text() == dead_p and (kept / MAPPINGS_FILE).read_text() == dead_m
        # and the provider that serves again is not left marked down by the probes of the dead one
        r = httpx.post(
            f"{rg.base_url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200 and r.headers["x-aib-provider"] == "pa"
        # the hook hears of each reload that was not applied: the rollback, and (on a busy machine,
        # where the second file may be written more than the quiet window after the first) the
        # rejection of the first file alone
        results = [r.result for r in service.controller.history]
        assert results.count("rolled_back") == 1 and set(results) <= {"applied", "rejected", "rolled_back"}
        assert counted == ["failure"] * (results.count("rejected") + 1)
        history = httpx.get(f"{rg.base_url}/admin/reloads").json()
        assert history["reloads"][0]["result"] == "rolled_back" and history["plan_version"] == good


def test_a_file_written_in_pieces_is_never_loaded_half_written(
    tmp_path: Path, upstreams: tuple[FakeOpenAIProcess, FakeOpenAIProcess]
) -> None:
    a, _ = upstreams
    cdir = tmp_path / "config"
    cdir.mkdir()
    models = tuple(f"m{i}" for i in range(6))
    write(cdir, provider_yaml({"pa": a.base_url}, models), mappings_yaml({"m0": "pa"}))
    full = mappings_yaml({m: "pa" for m in models})
    # cut mid-line too: some prefixes are valid configs with fewer models, some do not parse
    pieces = [full[i : i + 37] for i in range(0, len(full), 37)]
    with reloading_gateway(cdir, reload_debounce_ms=400) as (rg, service):
        with open(cdir / MAPPINGS_FILE, "w") as fh:
            for piece in pieces:
                fh.write(piece)
                fh.flush()
                time.sleep(0.05)  # well under the 400 ms debounce
        final = version_of(cdir)
        wait_for_reload(service, lambda r: r.result == "applied", what="the reload")
        assert rg.gateway.plan.version == final
        assert [(r.result, r.to_version) for r in service.controller.history] == [("applied", final)]
        assert len(pieces) >= 4
