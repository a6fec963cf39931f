"""Cross-file checks: each fires with its message, on the line that causes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from aib.config.check import check_config
from aib.config.compile import build_plan, compile_plan
from aib.config.errors import ConfigError
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE, load_config
from config_support import write_files

pytestmark = pytest.mark.unit

PROVIDERS = """\
version: 1
providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:11434
    models:
      - name: llama3
        capabilities: [chat, tools]
      - name: coder
        capabilities: [chat, code]
  vllm:
    type: vllm
    base_url: http://127.0.0.1:8001
    models: [big]
"""
MAPPINGS = """\
models:
  llama3:
    provider: ollama
  coder:
    provider: ollama
  big:
    provider: vllm
"""


def findings(tmp_path: Path, mappings: str = MAPPINGS, providers: str = PROVIDERS) -> list[str]:
    """Every issue as `file:line: path: message`, with the tmp folder cut off the file name."""
    write_files(tmp_path, providers, mappings)
    return [str(i).removeprefix(f"{tmp_path}/") for i in check_config(load_config(tmp_path))]


def m(line: int, path: str, message: str) -> str:
    return f"{MAPPINGS_FILE}:{line}: {path}: {message}"


def p(line: int, path: str, message: str) -> str:
    return f"{PROVIDERS_FILE}:{line}: {path}: {message}"


def test_base_config_is_clean(tmp_path: Path) -> None:
    assert findings(tmp_path) == []


# --------------------------------------------------------------------------- providers


def test_unknown_provider(tmp_path: Path) -> None:
    text = (
        MAPPINGS
        + "  x:\n    provider: olama\n  grp:\n    deployments:\n      - provider: vllm\n        upstream: big\n      - provider: vlm\n"
    )
    assert findings(tmp_path, text) == [
        m(9, "models.x.provider", "unknown provider 'olama' (known: ollama, vllm)"),
        m(14, "models.grp.deployments[1].provider", "unknown provider 'vlm' (known: ollama, vllm)"),
    ]


def test_unknown_provider_in_pattern(tmp_path: Path) -> None:
    text = MAPPINGS + "patterns:\n  - match: 'x/*'\n    provider: nobody\n"
    assert findings(tmp_path, text) == [
        m(10, "patterns[0].provider", "unknown provider 'nobody' (known: ollama, vllm)")
    ]


def test_model_not_served_by_provider(tmp_path: Path) -> None:
    text = MAPPINGS + "  mistral:\n    provider: ollama\n  small:\n    provider: vllm\n    upstream: tiny\n"
    assert findings(tmp_path, text) == [
        m(
            9,
            "models.mistral.provider",
            "provider 'ollama' does not serve model 'mistral' (it serves: llama3, coder); "
            "add it to providers.yaml or turn on discovery",
        ),
        m(
            12,
            "models.small.upstream",
            "provider 'vllm' does not serve model 'tiny' (it serves: big); "
            "add it to providers.yaml or turn on discovery",
        ),
    ]


def test_model_not_listed_is_fine_with_discovery(tmp_path: Path) -> None:
    providers = PROVIDERS.replace(
        "    models:\n      - name: llama3", "    discovery: true\n    models:\n      - name: llama3"
    )
    text = MAPPINGS + "  mistral:\n    provider: ollama\n"
    assert findings(tmp_path, text, providers) == []


def test_provider_without_a_model_list_serves_anything(tmp_path: Path) -> None:
    providers = PROVIDERS.replace("    models: [big]\n", "")
    assert findings(tmp_path, MAPPINGS + "  other:\n    provider: vllm\n", providers) == []


def test_two_providers_on_one_host_port(tmp_path: Path) -> None:
    providers = PROVIDERS + "  twin:\n    type: llamacpp\n    base_url: http://127.0.0.1:8001/\n"
    assert findings(tmp_path, providers=providers) == [
        p(
            17,
            "providers.twin.base_url",
            "127.0.0.1:8001 is also used by provider 'vllm'; two providers cannot "
            "share one server (list both models under one provider)",
        ),
    ]


def test_api_key_env_unset_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIB_TEST_KEY", raising=False)
    providers = PROVIDERS + "    api_key_env: AIB_TEST_KEY\n"
    write_files(tmp_path, providers, MAPPINGS)
    issues = check_config(load_config(tmp_path))
    assert [str(i).removeprefix(f"{tmp_path}/") for i in issues] == [
        p(
            15,
            "providers.vllm.api_key_env",
            "warning: environment variable AIB_TEST_KEY is not set; requests "
            "to 'vllm' will fail authentication",
        ),
    ]
    assert [i.severity for i in issues] == ["warning"]
    plan, _, warnings = build_plan(tmp_path)  # a warning does not stop the config
    assert len(warnings) == 1 and "big" in plan.groups


def test_api_key_env_set_no_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIB_TEST_KEY", "sk-test")
    assert findings(tmp_path, providers=PROVIDERS + "    api_key_env: AIB_TEST_KEY\n") == []


def test_disabled_provider_is_a_warning(tmp_path: Path) -> None:
    providers = PROVIDERS + "    enabled: false\n"
    assert findings(tmp_path, providers=providers) == [
        m(7, "models.big.provider", "warning: provider 'vllm' is disabled")
    ]


def test_model_listed_twice_by_a_provider(tmp_path: Path) -> None:
    providers = PROVIDERS.replace("models: [big]", "models: [big, big]")
    assert findings(tmp_path, providers=providers) == [
        p(14, "providers.vllm.models[1]", "model 'big' is listed twice")
    ]


# --------------------------------------------------------------------------- names


def test_unknown_alias_target(tmp_path: Path) -> None:
    text = MAPPINGS + "aliases:\n  fast: llama33\n  gone: nothing-like-it\n"
    assert findings(tmp_path, text) == [
        m(9, "aliases.fast", "alias points to unknown model 'llama33' (did you mean 'llama3'?)"),
        m(10, "aliases.gone", "alias points to unknown model 'nothing-like-it'"),
    ]


def test_alias_clashing_with_a_model_name(tmp_path: Path) -> None:
    text = MAPPINGS.replace(
        "  big:\n    provider: vllm\n", "  big:\n    provider: vllm\n    aliases: [large, coder]\n"
    )
    text += "aliases:\n  llama3: big\n"
    assert findings(tmp_path, text) == [
        m(8, "models.big.aliases[1]", "alias 'coder' is also a model name"),
        m(10, "aliases.llama3", "alias 'llama3' is also a model name"),
    ]


def test_alias_claimed_by_two_routes(tmp_path: Path) -> None:
    text = MAPPINGS.replace(
        "  coder:\n    provider: ollama\n", "  coder:\n    provider: ollama\n    aliases: [x]\n"
    )
    text = text.replace("  big:\n    provider: vllm\n", "  big:\n    provider: vllm\n    aliases: [x]\n")
    text += "aliases:\n  x: llama3\n"
    assert findings(tmp_path, text) == [
        m(9, "models.big.aliases[0]", "alias 'x' is also an alias of 'coder'"),
        m(11, "aliases.x", "alias 'x' is also an alias of 'big'"),
    ]


def test_reserved_capability_prefix(tmp_path: Path) -> None:
    text = (
        MAPPINGS
        + "  capability/code:\n    provider: ollama\n    upstream: coder\n    aliases: [capability/x]\n"
    )
    text += "aliases:\n  capability/chat: llama3\n"
    assert findings(tmp_path, text) == [
        m(8, "models.capability/code", "names starting with 'capability/' are reserved"),
        m(11, "models.capability/code.aliases[0]", "names starting with 'capability/' are reserved"),
        m(13, "aliases.capability/chat", "names starting with 'capability/' are reserved"),
    ]


# --------------------------------------------------------------------------- fallbacks


def test_unknown_fallback_target(tmp_path: Path) -> None:
    text = MAPPINGS.replace(
        "  big:\n    provider: vllm\n", "  big:\n    provider: vllm\n    fallbacks: [llama4]\n"
    )
    text += "fallbacks:\n  coder: [nobody]\n  ghost: [llama3]\ndefault_fallbacks: [tiny]\n"
    text += "patterns:\n  - match: 'o/*'\n    provider: ollama\n    fallbacks: [missing]\n"
    assert findings(tmp_path, text) == [
        m(8, "models.big.fallbacks[0]", "fallback to unknown model 'llama4' (did you mean 'llama3'?)"),
        m(10, "fallbacks.coder[0]", "fallback to unknown model 'nobody'"),
        m(11, "fallbacks.ghost", "fallbacks for unknown model 'ghost'"),
        m(12, "default_fallbacks[0]", "fallback to unknown model 'tiny'"),
        m(16, "patterns[0].fallbacks[0]", "fallback to unknown model 'missing'"),
    ]


def test_fallback_to_itself_through_an_alias(tmp_path: Path) -> None:
    text = MAPPINGS.replace(
        "  big:\n    provider: vllm\n",
        "  big:\n    provider: vllm\n    aliases: [large]\n    fallbacks: [large]\n",
    )
    assert findings(tmp_path, text) == [m(9, "models.big.fallbacks[0]", "'big' falls back to itself")]


def test_fallback_cycle_of_two_reported_once(tmp_path: Path) -> None:
    text = """\
models:
  a:
    provider: ollama
    upstream: llama3
    fallbacks: [b]
  b:
    provider: vllm
    upstream: big
    fallbacks: [a]
"""
    assert findings(tmp_path, text) == [m(5, "models.a.fallbacks[0]", "fallback cycle: a -> b -> a")]


def test_fallback_cycle_of_three_reported_once(tmp_path: Path) -> None:
    text = """\
models:
  a:
    provider: ollama
    upstream: llama3
    fallbacks: [b]
    aliases: [alpha]
  b:
    provider: vllm
    upstream: big
  c:
    provider: ollama
    upstream: coder
fallbacks:
  b: [c]
  c: [alpha]
"""
    assert findings(tmp_path, text) == [m(5, "models.a.fallbacks[0]", "fallback cycle: a -> b -> c -> a")]


def test_a_chain_without_a_cycle_is_fine(tmp_path: Path) -> None:
    text = MAPPINGS + "fallbacks:\n  llama3: [coder, big]\n  coder: [big]\ndefault_fallbacks: [big]\n"
    assert findings(tmp_path, text) == []


# --------------------------------------------------------------------------- patterns, capabilities, groups


def test_pattern_shadowed(tmp_path: Path) -> None:
    text = (
        MAPPINGS
        + """\
patterns:
  - match: 'o/*'
    provider: ollama
  - match: 'o/llama*'
    provider: ollama
  - match: 'v/?'
    provider: vllm
  - match: 'v/*'
    provider: vllm
"""
    )
    assert findings(tmp_path, text) == [
        m(
            11,
            "patterns[1].match",
            "pattern 'o/llama*' never matches: the earlier pattern #1 'o/*' takes every "
            "name it would (move it up or remove it)",
        ),
    ]


def test_capability_no_model_has(tmp_path: Path) -> None:
    text = MAPPINGS + "capabilities:\n  vision: {}\n  code:\n    prefer: [coder]\n"
    assert findings(tmp_path, text) == [
        m(
            9,
            "capabilities.vision",
            "no model has capability 'vision' (declare it under a provider's models[].capabilities)",
        ),
    ]


def test_capability_prefer_unknown_or_lacking(tmp_path: Path) -> None:
    text = MAPPINGS + "capabilities:\n  code:\n    prefer: [codr, llama3]\n"
    assert findings(tmp_path, text) == [
        m(10, "capabilities.code.prefer[0]", "unknown model 'codr' (did you mean 'coder'?)"),
        m(10, "capabilities.code.prefer[1]", "warning: model 'llama3' does not have capability 'code'"),
    ]


def test_weighted_group_without_positive_weight(tmp_path: Path) -> None:
    text = """\
defaults:
  strategy: weighted
models:
  pool:
    deployments:
      - {provider: ollama, upstream: llama3, weight: 0}
      - {provider: vllm, upstream: big, weight: 0}
  other:
    strategy: round_robin
    deployments:
      - {provider: ollama, upstream: llama3, weight: 0}
"""
    assert findings(tmp_path, text) == [
        m(5, "models.pool.deployments", "weighted group has no deployment with a positive weight")
    ]


def test_deployment_listed_twice(tmp_path: Path) -> None:
    text = "models:\n  pool:\n    deployments:\n      - {provider: vllm, upstream: big}\n      - {provider: vllm, upstream: big}\n"
    assert findings(tmp_path, text) == [
        m(5, "models.pool.deployments[1]", "deployment vllm/big is listed twice")
    ]


def test_errors_stop_compile_and_build(tmp_path: Path) -> None:
    findings(tmp_path, MAPPINGS + "aliases:\n  x: nowhere\n")
    with pytest.raises(ConfigError) as info:
        build_plan(tmp_path)
    assert [i.path for i in info.value.issues] == ["aliases.x"]
    with pytest.raises(ConfigError):
        compile_plan(load_config(tmp_path))
    assert "nowhere" not in compile_plan(load_config(tmp_path), check=False).groups


def test_pattern_on_reserved_capability_prefix(tmp_path: Path) -> None:
    text = MAPPINGS + "patterns:\n  - match: 'capability/vis*'\n    provider: vllm\n"
    assert findings(tmp_path, text) == [
        m(
            9,
            "patterns[0].match",
            "names starting with 'capability/' are reserved for capability requests and never reach "
            "patterns; use `capabilities:` rules instead",
        )
    ]
