"""The LiteLLM export: forms LiteLLM reads, determinism, and the stale / hand-edited check."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from aib.config.compile import build_plan
from aib.config.export_litellm import (
    STRATEGIES,
    _block,
    check_generated,
    export_litellm,
    generated_state,
    render_litellm,
    wildcard_model,
)
from aib.config.load import GENERATED_FILE, MAPPINGS_FILE
from aib.config.plan import RoutingPlan
from config_support import copy_examples, write_files

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def example_dir(tmp_path: Path) -> Path:
    """The fully commented examples as a config folder: every provider type, a weighted group, patterns."""
    return copy_examples(tmp_path / "cfg")


def render(d: Path) -> str:
    plan, cfg, _ = build_plan(d)
    return render_litellm(cfg, plan)


def load(text: str) -> Any:
    return YAML(typ="safe").load(text)


def entries(doc: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in doc["model_list"] if e["model_name"] == name]


@pytest.fixture
def ex(tmp_path: Path) -> tuple[str, Any, RoutingPlan]:
    d = example_dir(tmp_path)
    plan, cfg, _ = build_plan(d)
    text = render_litellm(cfg, plan)
    return text, load(text), plan


# --------------------------------------------------------------------------- determinism and header


def test_two_renders_are_byte_identical(tmp_path: Path) -> None:
    d = example_dir(tmp_path)
    assert render(d) == render(d)
    plan, cfg, _ = build_plan(d)
    assert render_litellm(cfg, plan) == render_litellm(cfg, plan)


def test_header_says_generated_by_aib_generate_with_both_hashes(tmp_path: Path) -> None:
    d = example_dir(tmp_path)
    plan, cfg, _ = build_plan(d)
    text = render_litellm(cfg, plan)
    head = text.split("\n# body-sha256: ")[0]
    assert text.startswith("# GENERATED FILE - DO NOT EDIT.")
    assert "`aib generate`" in head and "providers.yaml" in head and "model-mappings.yaml" in head
    assert f"\n# sources-sha256: {cfg.sources_hash}\n" in text
    body_hash, body = text.split("\n# body-sha256: ", 1)[1].split("\n", 1)
    assert body_hash == hashlib.sha256(body.encode()).hexdigest()[:16]


def test_yaml_11_and_12_readers_see_the_same_document(ex: tuple[str, Any, RoutingPlan]) -> None:
    pyyaml = pytest.importorskip("yaml")  # LiteLLM reads its config with PyYAML (YAML 1.1)
    text, doc, _ = ex
    assert pyyaml.safe_load(text) == doc
    assert set(doc) == {"model_list", "router_settings", "litellm_settings", "general_settings"}


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=40), st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False)))
def test_emitter_round_trips_any_string_and_number(s: str, x: object) -> None:
    pyyaml = pytest.importorskip("yaml")
    data = {"s": s, s: x, "l": [s, x, {"k": s}], "e": {}, "n": []}
    text = "\n".join(_block(data, 0)) + "\n"
    assert YAML(typ="safe").load(text) == data
    assert pyyaml.safe_load(text) == data


# --------------------------------------------------------------------------- model_list forms


def test_every_route_and_deployment_is_an_entry(ex: tuple[str, Any, RoutingPlan]) -> None:
    _, doc, plan = ex
    for name, group in plan.groups.items():
        live = [t for t in group.targets if plan.providers[t.provider].enabled]
        assert len(entries(doc, name)) == len(live), name
    ids = [e["model_info"]["id"] for e in doc["model_list"]]
    assert len(ids) == len(set(ids))


def test_load_balanced_group_is_one_entry_per_deployment_with_weights(
    ex: tuple[str, Any, RoutingPlan],
) -> None:
    _, doc, _ = ex
    group = entries(doc, "local-chat")
    assert [e["litellm_params"]["api_base"] for e in group] == [
        "http://127.0.0.1:8000/v1",
        "http://127.0.0.1:8080/v1",
    ]
    assert [e["litellm_params"]["weight"] for e in group] == [3, 1]
    assert len({e["model_info"]["id"] for e in group}) == 2
    # the route's own limits ride on each deployment
    assert all(e["litellm_params"]["num_retries"] == 3 for e in group)
    assert all(
        e["litellm_params"]["timeout"] == 120 and e["litellm_params"]["stream_timeout"] == 30 for e in group
    )


def test_equal_weights_or_another_strategy_write_no_weight(tmp_path: Path) -> None:
    providers = (
        "providers:\n  a: {type: llamacpp, base_url: 'http://127.0.0.1:9001', models: [m]}\n"
        "  b: {type: llamacpp, base_url: 'http://127.0.0.1:9002', models: [m]}\n"
    )
    mappings = (
        "models:\n  m:\n    strategy: least_outstanding\n    deployments:\n"
        "      - {provider: a, weight: 5}\n      - {provider: b, weight: 1}\n"
    )
    doc = load(render(write_files(tmp_path / "c", providers, mappings)))
    assert all("weight" not in e["litellm_params"] for e in doc["model_list"])
    # a group whose strategy differs from the default goes into a LiteLLM routing group
    assert doc["router_settings"]["routing_strategy"] == "simple-shuffle"
    assert doc["router_settings"]["routing_groups"] == [
        {"group_name": "aib-least-busy", "models": ["m"], "routing_strategy": "least-busy"}
    ]


def test_ollama_uses_ollama_chat_and_the_server_root(ex: tuple[str, Any, RoutingPlan]) -> None:
    _, doc, _ = ex
    (e,) = entries(doc, "llama3.1:8b")
    assert e["litellm_params"] == {"model": "ollama_chat/llama3.1:8b", "api_base": "http://127.0.0.1:11434"}
    (emb,) = entries(doc, "nomic-embed-text")  # LiteLLM embeds through ollama/, not ollama_chat/
    assert emb["litellm_params"]["model"] == "ollama/nomic-embed-text"
    assert emb["model_info"]["mode"] == "embedding"
    assert not any(
        e["litellm_params"]["api_base"].endswith("/v1")
        for e in doc["model_list"]
        if e["litellm_params"]["model"].startswith("ollama")
    )


def test_openai_compatible_servers_use_openai_prefix_and_v1(ex: tuple[str, Any, RoutingPlan]) -> None:
    _, doc, _ = ex
    (e,) = entries(doc, "llama-3.1-8b-instruct")  # vllm
    assert e["litellm_params"] == {
        "model": "openai/meta-llama/Llama-3.1-8B-Instruct",
        "api_base": "http://127.0.0.1:8001/v1",
        "api_key": "none",
    }
    for local in entries(doc, "local-chat"):  # llamacpp
        assert local["litellm_params"]["model"] == "openai/smollm2"
        assert local["litellm_params"]["api_key"] == "none"


def test_openai_compatible_api_prefix_is_the_api_base(tmp_path: Path) -> None:
    providers = (
        "providers:\n  tgi:\n    type: openai_compatible\n    base_url: http://127.0.0.1:3000\n"
        "    api_prefix: /api/v1\n    api_key_env: TGI_TOKEN\n    models: [m]\n"
    )
    doc = load(render(write_files(tmp_path / "c", providers, "models:\n  m: {provider: tgi}\n")))
    assert doc["model_list"][0]["litellm_params"] == {
        "model": "openai/m",
        "api_base": "http://127.0.0.1:3000/api/v1",
        "api_key": "os.environ/TGI_TOKEN",
    }


def test_cloud_providers_read_keys_from_the_environment(ex: tuple[str, Any, RoutingPlan]) -> None:
    _, doc, _ = ex
    (gpt,) = entries(doc, "gpt-4o-mini")
    assert gpt["litellm_params"] == {
        "model": "openai/gpt-4o-mini",
        "api_base": "https://api.openai.com/v1",
        "api_key": "os.environ/OPENAI_API_KEY",
        "organization": "org-lab",
    }
    (claude,) = entries(doc, "claude")
    assert claude["litellm_params"]["model"] == "anthropic/claude-sonnet-4-5"
    assert claude["litellm_params"]["api_key"] == "os.environ/ANTHROPIC_API_KEY"


def test_a_key_in_the_environment_never_reaches_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-do-not-write-me")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-do-not-write-me")
    text = render(example_dir(tmp_path))
    assert "do-not-write-me" not in text
    for e in load(text)["model_list"]:
        key = e["litellm_params"].get("api_key")
        assert key is None or key == "none" or key.startswith("os.environ/"), e


def test_route_params_become_litellm_params(ex: tuple[str, Any, RoutingPlan]) -> None:
    _, doc, _ = ex
    (e,) = entries(doc, "coder")
    assert e["litellm_params"]["temperature"] == 0.2
    assert e["litellm_params"]["max_tokens"] == 1024
    assert e["litellm_params"]["model"] == "ollama_chat/qwen2.5-coder:7b"


# --------------------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("glob", "template", "want"),
    [
        ("ollama/*", "{1}", "*"),
        ("hf/*/*", "{1}/{2}", "*/*"),
        ("openai/gpt-*", "gpt-{1}", "gpt-*"),
        ("alias/*", "fixed-model", "fixed-model"),
        ("x/?", "{1}", None),  # LiteLLM has no '?'
        ("x/*/*", "{2}/{1}", None),  # no reordering
        ("x/*", "{0}", None),  # no whole-name reference
        ("x/*/*", "{1}", None),  # every wildcard must be used
        ("x/*", "{1}-{1}", None),  # no repeats
    ],
)
def test_wildcard_model(glob: str, template: str, want: str | None) -> None:
    got, why = wildcard_model(glob, template)
    assert got == want
    assert bool(why) == (want is None)


def test_patterns_become_litellm_wildcards(ex: tuple[str, Any, RoutingPlan]) -> None:
    _, doc, plan = ex
    models = {
        e["model_name"]: e["litellm_params"]["model"] for e in doc["model_list"] if "*" in e["model_name"]
    }
    assert models == {"ollama/*": "ollama_chat/*", "hf/*/*": "openai/*/*", "openai/gpt-*": "openai/gpt-*"}
    assert len(models) == len(plan.patterns)


def test_inexpressible_pattern_is_a_comment_and_a_note(tmp_path: Path) -> None:
    providers = "providers:\n  o: {type: ollama, base_url: 'http://127.0.0.1:11434', models: [m]}\n"
    mappings = (
        "models:\n  m: {provider: o}\n"
        "patterns:\n  - {match: 'q/?', provider: o}\n  - {match: 'r/*/*', provider: o, upstream: '{2}:{1}'}\n"
    )
    plan, cfg, _ = build_plan(write_files(tmp_path / "c", providers, mappings))
    export = export_litellm(cfg, plan)
    assert [e["model_name"] for e in load(export.text)["model_list"]] == ["m"]
    assert any("'q/?'" in n and "no '?'" in n for n in export.notes)
    assert any("'r/*/*'" in n and "left out" in n for n in export.notes)
    for note in export.notes:
        assert f"#   - {note}" in export.text


# --------------------------------------------------------------------------- aliases and fallbacks


def test_aliases_are_model_group_aliases(ex: tuple[str, Any, RoutingPlan]) -> None:
    _, doc, plan = ex
    aliases = doc["router_settings"]["model_group_alias"]
    plain = {k: v for k, v in aliases.items() if isinstance(v, str)}
    assert plain == dict(plan.aliases)
    assert list(plain) == sorted(plain)
    assert aliases["capability/code"] == {"model": "coder", "hidden": True}


def test_every_fallback_chain_is_exported_for_the_route_and_its_aliases(
    ex: tuple[str, Any, RoutingPlan],
) -> None:
    _, doc, plan = ex
    chains: dict[str, list[str]] = {}
    for item in doc["router_settings"]["fallbacks"]:
        ((key, chain),) = item.items()
        assert key not in chains
        chains[key] = chain
    for name, group in plan.groups.items():
        if group.fallbacks:
            assert chains[name] == list(group.fallbacks), name
            for alias in group.aliases:
                assert chains[alias] == list(group.fallbacks), alias
        else:
            assert name not in chains
    res = plan.resolve("capability/code")
    assert res is not None
    assert chains["capability/code"] == [g.name for g in res.fallbacks]
    assert "*" not in chains  # a "*" chain would make LiteLLM serve unknown names with it
    assert doc["router_settings"]["max_fallbacks"] == max(len(c) for c in chains.values())


def test_router_settings_follow_defaults(ex: tuple[str, Any, RoutingPlan]) -> None:
    _, doc, plan = ex
    rs = doc["router_settings"]
    assert rs["routing_strategy"] == STRATEGIES[plan.default_strategy]
    assert rs["num_retries"] == plan.default_max_attempts - 1
    assert rs["timeout"] == plan.default_timeouts.total_s
    assert rs["stream_timeout"] == plan.default_timeouts.first_byte_s
    assert rs["allowed_fails"] == 4 and rs["cooldown_time"] == 30
    assert doc["litellm_settings"] == {"drop_params": True}


def test_strategy_names_are_litellm_ones() -> None:
    assert set(STRATEGIES.values()) <= {"simple-shuffle", "least-busy", "latency-based-routing"}
    assert STRATEGIES == {
        "round_robin": "simple-shuffle",
        "weighted": "simple-shuffle",
        "least_outstanding": "least-busy",
        "latency": "latency-based-routing",
        "least_loaded": "least-busy",  # LiteLLM reads no backend signals: its own in-flight count
        "loaded_first": "simple-shuffle",  # no equivalent: a note says so
        "prefix_affinity": "simple-shuffle",
    }


# --------------------------------------------------------------------------- disabled providers


def test_disabled_providers_are_left_out_with_their_routes_aliases_and_chains(tmp_path: Path) -> None:
    providers = (
        "providers:\n"
        "  on: {type: llamacpp, base_url: 'http://127.0.0.1:9001', models: [a, b]}\n"
        "  off: {type: vllm, base_url: 'http://127.0.0.1:9002', enabled: false, models: [b, c]}\n"
    )
    mappings = (
        "models:\n"
        "  a: {provider: on, fallbacks: [c]}\n"
        "  b:\n    deployments: [{provider: on}, {provider: off}]\n"
        "  c: {provider: off, aliases: [cee]}\n"
        "patterns:\n  - {match: 'off/*', provider: off}\n"
    )
    plan, cfg, _ = build_plan(write_files(tmp_path / "c", providers, mappings))
    export = export_litellm(cfg, plan)
    doc = load(export.text)
    assert [e["model_name"] for e in doc["model_list"]] == ["a", "b"]
    assert "9002" not in export.text.split("model_list:", 1)[1]
    assert "cee" not in doc["router_settings"].get("model_group_alias", {})
    chains = [next(iter(f)) for f in doc["router_settings"].get("fallbacks", [])]
    assert "a" not in chains and "cee" not in chains  # a's only fallback, c, is gone
    assert any("'c'" in n and "disabled" in n for n in export.notes)
    assert any("'off/*'" in n for n in export.notes)


# --------------------------------------------------------------------------- freshness


def test_check_generated_fresh_stale_hand_edited_missing(tmp_path: Path) -> None:
    d = example_dir(tmp_path)
    out = d / GENERATED_FILE
    assert generated_state(out, render(d))[0] == "missing"
    out.write_text(render(d))
    assert check_generated(out, render(d)) == (True, check_generated(out, render(d))[1])
    assert "up to date" in check_generated(out, render(d))[1]

    # a hand edit of the body
    edited = out.read_text().replace("drop_params: true", "drop_params: false")
    out.write_text(edited)
    ok, reason = check_generated(out, render(d))
    assert not ok and "edited by hand" in reason

    # the header's hash lines removed
    out.write_text("\n".join(ln for ln in edited.splitlines() if "sha256" not in ln) + "\n")
    assert generated_state(out, render(d))[0] == "hand-edited"

    # sources changed since
    out.write_text(render(d))
    (d / MAPPINGS_FILE).write_text((d / MAPPINGS_FILE).read_text() + "\n# a comment changes the bytes\n")
    state, reason = generated_state(out, render(d))
    assert state == "stale" and "changed since it was generated" in reason


def test_shipped_litellm_file_is_current() -> None:
    config = ROOT / "config"
    ok, reason = check_generated(config / GENERATED_FILE, render(config))
    assert ok, f"{reason} (run `aib generate` in the repo root)"
