"""The configuration of backend signals and of the three load-aware strategies: keys, checks, the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from aib.config.compile import build_plan
from aib.config.errors import ConfigError
from aib.config.export_litellm import export_litellm
from aib.config.schema import Balance
from config_support import write_files

pytestmark = pytest.mark.unit

PROVIDERS = """version: 1
providers:
  ol:
    type: ollama
    base_url: http://127.0.0.1:11434
    discovery: true
    signals: {interval_s: 0.5, stale_after_s: 3}
  lc:
    type: llamacpp
    base_url: http://127.0.0.1:8080
    models: [smollm2]
  vl:
    type: vllm
    base_url: http://127.0.0.1:8000
    models: [smollm2]
    signals: {enabled: false}
"""
MAPPINGS = """version: 1
defaults:
  strategy: least_loaded
  balance: {affinity_epsilon: 0.5, tie_break: round_robin}
models:
  sticky:
    strategy: prefix_affinity
    balance: {affinity_epsilon: 2}
    deployments: [{provider: lc, upstream: smollm2}, {provider: vl, upstream: smollm2}]
  warm:
    strategy: loaded_first
    balance: {tie_break: least_outstanding}
    deployments: [{provider: ol, upstream: smollm2}, {provider: lc, upstream: smollm2}]
  plain: {provider: lc, upstream: smollm2}
patterns:
  - {match: "ol/*", provider: ol}
"""


def plan_of(tmp_path: Path, providers: str = PROVIDERS, mappings: str = MAPPINGS):  # type: ignore[no-untyped-def]
    return build_plan(write_files(tmp_path, providers, mappings))


def test_signals_and_balance_reach_the_plan(tmp_path: Path) -> None:
    plan, _, warnings = plan_of(tmp_path)
    assert warnings == []
    ol, lc, vl = (plan.providers[n].signals for n in ("ol", "lc", "vl"))
    assert ol is not None and (ol.interval_s, ol.timeout_s, ol.stale_after_s) == (0.5, 1.0, 3.0)
    assert lc is not None and (lc.enabled, lc.interval_s, lc.stale_after_s) == (True, 2.0, 10.0)  # defaults
    assert vl is not None and vl.enabled is False
    g = plan.groups
    assert g["sticky"].balance == Balance(affinity_epsilon=2, tie_break="round_robin")  # one key overridden
    assert g["warm"].balance == Balance(affinity_epsilon=0.5, tie_break="least_outstanding")
    assert (
        g["plain"].balance == Balance(affinity_epsilon=0.5, tie_break="round_robin")
        and g["plain"].strategy == "least_loaded"
    )
    res = plan.resolve("ol/llama3.2")
    assert (
        res is not None and res.group.balance == plan.default_balance and res.group.strategy == "least_loaded"
    )
    discovered = plan.with_discovered({"ol": ("qwen3",)}).groups["qwen3"]
    assert discovered.balance == plan.default_balance
    explained = plan.resolve("sticky").explain()  # type: ignore[union-attr]
    assert explained["strategy"] == "prefix_affinity" and explained["balance"] == {
        "affinity_epsilon": 2.0,
        "tie_break": "round_robin",
    }


@pytest.mark.parametrize(
    ("providers", "mappings", "message"),
    [
        (
            PROVIDERS.replace("signals: {enabled: false}", "signals: {interval_s: 5, stale_after_s: 5}"),
            MAPPINGS,
            "stale_after_s (5) must be longer than interval_s + timeout_s (6)",
        ),
        (
            PROVIDERS + "  cloud:\n    type: openai\n    signals: {interval_s: 1}\n",
            MAPPINGS,
            "providers.cloud.signals: unknown key",
        ),
        (PROVIDERS, MAPPINGS.replace("tie_break: round_robin", "tie_break: prefix_affinity"), "tie_break"),
        (PROVIDERS, MAPPINGS.replace("affinity_epsilon: 2", "affinity_epsilon: 0"), "affinity_epsilon"),
        (PROVIDERS, MAPPINGS.replace("strategy: loaded_first", "strategy: most_loaded"), "most_loaded"),
    ],
)
def test_bad_values_are_errors_with_a_line(
    tmp_path: Path, providers: str, mappings: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        plan_of(tmp_path, providers, mappings)
    text = str(err.value)
    assert message in text and (".yaml:" in text)


def test_fast_polling_of_llama_server_is_a_warning(tmp_path: Path) -> None:
    fast = PROVIDERS.replace(
        "    models: [smollm2]\n  vl:",
        "    models: [smollm2]\n    signals: {interval_s: 0.5, stale_after_s: 3}\n  vl:",
    )
    _, _, warnings = plan_of(tmp_path, fast)
    (w,) = warnings
    assert w.severity == "warning" and "providers.lc.signals.interval_s" in str(w)
    assert "hung up" in w.message and "1.5 s" in w.message
    off = fast.replace(
        "signals: {interval_s: 0.5, stale_after_s: 3}\n  vl:",
        "signals: {enabled: false, interval_s: 0.5, stale_after_s: 3}\n  vl:",
    )
    assert plan_of(tmp_path, off)[2] == []  # not polled: nothing to warn about


def test_litellm_export_says_what_has_no_equivalent(tmp_path: Path) -> None:
    plan, cfg, _ = plan_of(tmp_path)
    out = export_litellm(cfg, plan)
    assert "route 'sticky': LiteLLM has no prefix_affinity; its deployments are shuffled" in out.notes
    assert "route 'warm': LiteLLM has no loaded_first; its deployments are shuffled" in out.notes
    assert "routing_strategy: least-busy" in out.text  # least_loaded, the default here
