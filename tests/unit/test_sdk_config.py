"""Providers of type ``litellm_sdk``: the schema, the cross-file checks, the plan, the provider kind, the
LiteLLM export, the options header and where the adapter's Python is found."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from aib.config.check import check_config
from aib.config.compile import build_plan
from aib.config.errors import ConfigError
from aib.config.export_litellm import export_litellm
from aib.config.litellm_sdk import (
    CONFIG_HEADER,
    NOT_INSTALLED,
    PYTHON_ENV,
    TOKEN_ENV,
    TOKEN_HEADER,
    SdkOptions,
    find_adapter_python,
    litellm_version,
    param_problem,
)
from aib.config.load import load_config
from aib.config.schema import ProvidersFile
from aib.providers import kind_for
from config_support import write_files

pytestmark = pytest.mark.unit

PROVIDERS = """\
version: 1
providers:
  claude:
    type: litellm_sdk
    litellm_model: "anthropic/{model}"
    api_key_env: AIB_TEST_SDK_KEY
    api_base: https://api.anthropic.com
    timeout_s: 90
    litellm_params: {top_k: 5}
    models: [claude-3-5-haiku-latest, claude-sonnet-4-5]
  bedrock:
    type: litellm_sdk
    litellm_model:
      haiku: bedrock/anthropic.claude-3-5-haiku-20241022-v1:0
    litellm_params: {aws_region_name: eu-west-1}
    models: [haiku]
  local:
    type: llamacpp
    base_url: http://127.0.0.1:8000
    models: [smollm2]
"""
MAPPINGS = """\
models:
  claude-haiku: {provider: claude, upstream: claude-3-5-haiku-latest}
  haiku: {provider: bedrock}
  smollm2: {provider: local}
patterns:
  - match: "claude/*"
    provider: claude
"""


def sdk(**over: Any) -> dict[str, Any]:
    return {"type": "litellm_sdk", "litellm_model": "anthropic/{model}", **over}


def errors_of(provider: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        ProvidersFile.model_validate({"providers": {"p": provider}})
    return str(info.value)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make the adapter's Python look installed: a venv-shaped folder whose python is this one and
    whose site-packages holds a (stand-in) litellm package (its code is not needed for config work)."""
    venv = tmp_path / "venv-litellm"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / "litellm").mkdir(parents=True)
    (site / "litellm" / "__init__.py").write_text("")
    (site / "litellm-1.108.7.dist-info").mkdir()
    monkeypatch.setenv(PYTHON_ENV, str(venv / "bin" / "python"))


def test_an_explicit_python_without_litellm_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PYTHON_ENV, sys.executable)  # the gateway's own Python has no litellm
    found = find_adapter_python()
    assert not found.installed and found.problem is not None and "has no litellm package" in found.problem


# --------------------------------------------------------------------------- schema


def test_defaults_of_a_minimal_provider() -> None:
    p = ProvidersFile.model_validate({"providers": {"p": sdk()}}).providers["p"]
    assert p.base_url == "http://127.0.0.1:4010"
    assert (p.timeout_s, p.drop_params, p.litellm_params, p.api_base) == (600.0, True, {}, None)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"base_url": "http://10.0.0.5:4010"}, "the adapter runs on this machine"),
        ({"base_url": "https://127.0.0.1:4010"}, "the adapter runs on this machine"),
        ({"base_url": "http://127.0.0.1"}, "give the adapter's port"),
        ({"base_url": "http://127.0.0.1:4010/x"}, "give the adapter's port and no path"),
        ({"discovery": True}, "discovery is not available"),
        ({"litellm_model": " "}, "give the LiteLLM model string"),
        ({"litellm_model": {}}, "the mapping is empty"),
        ({"litellm_model": {"a": "x/a"}, "models": ["a", "b"]}, "litellm_model has no entry for b"),
        ({"api_base": "ftp://x"}, "api_base must be an http"),
        ({"litellm_params": {"api_key": "x"}}, "set by the adapter itself"),
        ({"litellm_params": {"aws_secret_access_key": "x"}}, "looks like a credential"),
        ({"litellm_params": {"Bad-Name": 1}}, "String should match pattern"),
        ({"timeout_s": 0}, "greater than 0"),
    ],
)
def test_bad_provider_settings_are_explained(over: dict[str, Any], message: str) -> None:
    assert message in errors_of(sdk(**over))


def test_param_problem_allows_plain_settings() -> None:
    assert param_problem("aws_region_name") is None
    assert param_problem("vertex_project") is None
    assert "credential" in str(param_problem("vertex_credentials"))


# --------------------------------------------------------------------------- checks and the plan


def test_plan_points_the_provider_at_its_adapter(tmp_path: Path, installed: None) -> None:
    plan, _, warnings = build_plan(write_files(tmp_path, PROVIDERS, MAPPINGS))
    info = plan.providers["claude"]
    assert info.api_base == "http://127.0.0.1:4010/v1"
    assert info.health_url == "http://127.0.0.1:4010/health"
    assert info.sdk is not None
    assert info.sdk.litellm_model("claude-3-5-haiku-latest") == "anthropic/claude-3-5-haiku-latest"
    assert (info.sdk.api_base, info.sdk.timeout_s, dict(info.sdk.params)) == (
        "https://api.anthropic.com",
        90,
        {"top_k": 5},
    )
    assert plan.providers["local"].sdk is None
    bedrock = plan.providers["bedrock"].sdk
    assert (
        bedrock is not None
        and bedrock.litellm_model("haiku") == "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0"
    )
    assert bedrock.litellm_model("other") is None
    # two litellm_sdk providers share the default adapter address: no port clash
    assert not [w for w in warnings if "also used by" in w.message]


def test_another_type_on_the_adapter_address_is_a_clash(tmp_path: Path, installed: None) -> None:
    text = PROVIDERS.replace("http://127.0.0.1:8000", "http://127.0.0.1:4010")
    with pytest.raises(ConfigError) as info:
        build_plan(write_files(tmp_path, text, MAPPINGS))
    assert "127.0.0.1:4010 is also used by provider 'claude'" in str(info.value)


def test_a_route_to_an_unmapped_model_is_an_error_on_its_line(tmp_path: Path, installed: None) -> None:
    mappings = MAPPINGS.replace("haiku: {provider: bedrock}", "haiku: {provider: bedrock, upstream: sonnet}")
    with pytest.raises(ConfigError) as info:
        build_plan(write_files(tmp_path, PROVIDERS, mappings))
    text = str(info.value)
    assert "model-mappings.yaml:3:" in text
    assert "provider 'bedrock' maps no LiteLLM model for 'sonnet' (litellm_model has: haiku)" in text


def test_missing_adapter_is_a_warning_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "no-such-python"))
    cfg = load_config(write_files(tmp_path / "cfg", PROVIDERS, MAPPINGS))
    issues = [i for i in check_config(cfg) if NOT_INSTALLED in i.message]
    assert [i.severity for i in issues] == ["warning", "warning"]  # claude and bedrock
    assert f"${PYTHON_ENV}=" in issues[0].message and issues[0].path.endswith("claude.type")


def test_a_disabled_provider_is_not_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "no-such-python"))
    text = PROVIDERS.replace(
        "  bedrock:\n    type: litellm_sdk\n", "  bedrock:\n    type: litellm_sdk\n    enabled: false\n"
    )
    cfg = load_config(write_files(tmp_path / "cfg", text, MAPPINGS))
    assert len([i for i in check_config(cfg) if NOT_INSTALLED in i.message]) == 1


# --------------------------------------------------------------------------- the provider kind


def test_kind_sends_the_options_and_the_key_and_reads_the_adapters_health(
    tmp_path: Path, installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIB_TEST_SDK_KEY", "sk-ant-unit")
    monkeypatch.setenv(TOKEN_ENV, "gateway-token")
    plan, _, _ = build_plan(write_files(tmp_path, PROVIDERS, MAPPINGS))
    kind = kind_for("litellm_sdk")
    headers = kind.auth_headers(plan.providers["claude"])
    assert headers["authorization"] == "Bearer sk-ant-unit"
    assert headers[TOKEN_HEADER] == "gateway-token"
    opts = SdkOptions.from_header(headers[CONFIG_HEADER])
    assert opts == plan.providers["claude"].sdk
    assert "authorization" not in kind.auth_headers(plan.providers["bedrock"])  # no key configured
    assert kind.stream_usage
    assert kind.healthy(200, {"status": "ok"}) == (True, None)
    down = {"error": {"message": NOT_INSTALLED, "type": "service_unavailable"}}
    assert kind.healthy(503, down) == (False, NOT_INSTALLED)
    ok, why = kind.healthy(502, None)
    assert not ok and "502" in str(why)


# --------------------------------------------------------------------------- the options header


def test_options_round_trip_and_bad_headers_say_why() -> None:
    opts = SdkOptions("p", {"a": "x/a"}, "http://h:1", "K", 5.0, False, {"n": 1}, ("a",))
    back = SdkOptions.from_header(opts.to_header())
    assert back == opts and back.listed_models() == ("a",)
    assert SdkOptions("p", "x/{model}").listed_models() == ()
    assert SdkOptions("p", "x/fixed").litellm_model("anything") == "x/fixed"
    for raw, why in [
        ("%%%", "not base64url JSON"),
        (SdkOptions("p", "m").to_header()[:-3], "not base64url JSON"),
        (_b64([1]), "must hold a JSON object"),
        (_b64({"model": "m"}), "`provider` must be"),
        (_b64({"provider": "p", "model": 3}), "`model` must be"),
        (_b64({"provider": "p", "model": "m", "params": []}), "`params` must be"),
        (_b64({"provider": "p", "model": "m", "timeout_s": "x"}), "`timeout_s` must be"),
    ]:
        with pytest.raises(ValueError, match=why):
            SdkOptions.from_header(raw)


def _b64(doc: object) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


# --------------------------------------------------------------------------- the adapter's Python


def _venv(root: Path, with_litellm: bool, version: str = "1.108.7") -> Path:
    bin_dir = root / ".venv-litellm" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    site = root / ".venv-litellm" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    if with_litellm:
        (site / "litellm").mkdir()
        (site / "litellm" / "__init__.py").write_text("")
        (site / f"litellm-{version}.dist-info").mkdir()
    return python


def test_find_adapter_python_in_order(tmp_path: Path) -> None:
    good = _venv(tmp_path / "good", True)
    empty = _venv(tmp_path / "empty", False)
    found = find_adapter_python({}, roots=[tmp_path / "empty", tmp_path / "good"])
    assert (found.path, found.installed, found.version) == (str(good), True, "1.108.7")
    assert found.problem is None
    by_bin = find_adapter_python({"AIB_LITELLM_BIN": str(good.parent / "litellm")}, roots=[])
    assert by_bin.path == str(good) and "AIB_LITELLM_BIN" in by_bin.how
    explicit = find_adapter_python({PYTHON_ENV: str(empty)}, roots=[])
    assert explicit.path == str(empty) and explicit.installed  # trusted: the adapter says if it is not
    none = find_adapter_python({}, roots=[tmp_path / "empty"])
    assert not none.installed and none.path == sys.executable
    assert none.problem is not None and none.problem.startswith(NOT_INSTALLED)
    assert str(tmp_path / "empty" / ".venv-litellm") in none.problem
    bad = find_adapter_python({PYTHON_ENV: str(tmp_path / "missing")}, roots=[])
    assert not bad.installed and "is not an executable file" in str(bad.problem)


def test_litellm_version_without_dist_info(tmp_path: Path) -> None:
    python = _venv(tmp_path, True)
    for info in (tmp_path / ".venv-litellm" / "lib" / "python3.11" / "site-packages").glob("*.dist-info"):
        info.rmdir()
    assert litellm_version(python) == "?"
    assert litellm_version(Path(os.devnull)) is None


# --------------------------------------------------------------------------- the LiteLLM export


def test_export_sends_litellm_the_model_string_straight(tmp_path: Path, installed: None) -> None:
    plan, cfg, _ = build_plan(write_files(tmp_path, PROVIDERS, MAPPINGS))
    export = export_litellm(cfg, plan)
    doc = YAML(typ="safe").load(export.text)
    by_name = {e["model_name"]: e["litellm_params"] for e in doc["model_list"]}
    assert by_name["claude-haiku"] == {
        "model": "anthropic/claude-3-5-haiku-latest",
        "api_base": "https://api.anthropic.com",
        "api_key": "os.environ/AIB_TEST_SDK_KEY",
        "top_k": 5,
    }
    assert by_name["haiku"] == {
        "model": "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0",
        "aws_region_name": "eu-west-1",
    }
    assert by_name["claude/*"]["model"] == "anthropic/*"  # the template keeps LiteLLM's wildcard


def test_export_leaves_out_a_pattern_to_a_mapped_provider(tmp_path: Path, installed: None) -> None:
    mappings = MAPPINGS + '  - match: "bedrock/*"\n    provider: bedrock\n'
    plan, cfg, _ = build_plan(write_files(tmp_path, PROVIDERS, mappings))
    export = export_litellm(cfg, plan)
    assert any("'bedrock/*'" in n and "maps model names one by one" in n for n in export.notes)
    assert '"bedrock/*"' not in export.text.split("model_list:", 1)[1]


def test_aib_ports_shows_one_adapter_per_address(tmp_path: Path, installed: None) -> None:
    from aib.cli.ports import configured

    cfg = load_config(write_files(tmp_path, PROVIDERS, MAPPINGS))
    (adapter,) = [r for r in configured(cfg, 4000, 5001) if r.port == 4010]
    assert adapter.users == ["LiteLLM SDK adapter (claude, bedrock)"] and adapter.kinds == ["provider"]
