"""Loading the two config files: every bad input names its file, line and key."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from aib.config.compile import build_plan
from aib.config.errors import ConfigError, ConfigIssue
from aib.config.load import (
    DEFAULTS_DIR,
    MAPPINGS_FILE,
    PROVIDERS_FILE,
    display_name,
    load_config,
    load_defaults,
    load_from_bytes,
    resolve_config_dir,
)
from config_support import write_files

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

PROVIDERS = """\
version: 1
providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:11434
    models: [m1, m2]
  vllm:
    type: vllm
    base_url: http://127.0.0.1:8001
    models:
      - name: big
        capabilities: [chat, tools]
"""
MAPPINGS = """\
models:
  m1:
    provider: ollama
  big:
    provider: vllm
"""


def write(d: Path, providers: str | bytes = PROVIDERS, mappings: str | bytes = MAPPINGS) -> Path:
    return write_files(d, providers, mappings)


def issues(d: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(d)
    return [str(i) for i in info.value.issues]


def one_issue(d: Path) -> str:
    found = issues(d)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- what ships


def test_shipped_config_validates_and_compiles() -> None:
    plan, cfg, warnings = build_plan(REPO / "config")
    assert warnings == []
    assert {"ollama", "llama_cpp_python", "llama_cpp_native", "vllm"} <= set(plan.providers)
    assert plan.resolve("llama3") is not None
    assert cfg.sources_hash == plan.version


@pytest.mark.parametrize(
    "name",
    [PROVIDERS_FILE, MAPPINGS_FILE, "schemas/providers.schema.json", "schemas/model-mappings.schema.json"],
)
def test_packaged_defaults_are_the_shipped_config(name: str) -> None:
    # `aib serve` with no config/ folder runs on the package copy; it must be the same bytes
    assert (DEFAULTS_DIR / name).read_bytes() == (REPO / "config" / name).read_bytes()


def test_load_defaults() -> None:
    cfg = load_defaults()
    assert cfg.config_dir == DEFAULTS_DIR
    assert "ollama" in cfg.providers.providers


def test_minimal_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path))
    assert set(cfg.providers.providers) == {"ollama", "vllm"}
    ollama = cfg.providers.providers["ollama"]
    assert [m.name for m in ollama.models] == ["m1", "m2"]  # bare strings are {name: ...}
    assert ollama.host_port == ("127.0.0.1", 11434)
    assert cfg.mappings.models["m1"].provider == "ollama"


def test_trailing_slash_is_dropped_and_default_ports(tmp_path: Path) -> None:
    text = PROVIDERS.replace("http://127.0.0.1:11434", "https://gpu.lab.example/").replace(
        "http://127.0.0.1:8001", "http://gpu.lab.example"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.providers.providers["ollama"].base_url == "https://gpu.lab.example"
    assert cfg.providers.providers["ollama"].host_port == ("gpu.lab.example", 443)
    assert cfg.providers.providers["vllm"].host_port == ("gpu.lab.example", 80)


def test_config_dir_from_argument_env_or_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIB_CONFIG_DIR", raising=False)
    assert resolve_config_dir(None) == Path("config")
    monkeypatch.setenv("AIB_CONFIG_DIR", str(tmp_path))
    assert resolve_config_dir(None) == tmp_path
    assert resolve_config_dir("elsewhere") == Path("elsewhere")
    write(tmp_path)
    assert load_config().config_dir == tmp_path


def test_display_name_is_relative_under_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert display_name(tmp_path / "config" / PROVIDERS_FILE) == f"config/{PROVIDERS_FILE}"
    assert display_name(Path("/elsewhere/x.yaml")) == "/elsewhere/x.yaml"


def test_load_from_bytes_and_hash() -> None:
    a = load_from_bytes(PROVIDERS.encode(), MAPPINGS.encode())
    b = load_from_bytes(PROVIDERS.encode(), MAPPINGS.encode() + b"\n# comment\n")
    assert a.config_dir is None
    assert a.sources_hash != b.sources_hash
    assert len(a.sources_hash) == 16
    with pytest.raises(ConfigError) as info:
        load_from_bytes(b"providers: 'x\n", MAPPINGS.encode(), names=("p.yaml", "m.yaml"))
    assert str(info.value.issues[0]).startswith("p.yaml:1: YAML syntax error")


# --------------------------------------------------------------------------- YAML syntax


def test_tab_indentation(tmp_path: Path) -> None:
    bad = MAPPINGS.replace("  big:\n    provider: vllm", "  big:\n\tprovider: vllm")
    msg = one_issue(write(tmp_path, mappings=bad))
    assert msg.startswith(f"{tmp_path}/{MAPPINGS_FILE}:5: YAML syntax error")
    assert "tabs" in msg


def test_unclosed_quote_points_where_it_opens(tmp_path: Path) -> None:
    bad = PROVIDERS.replace("base_url: http://127.0.0.1:8001", 'base_url: "http://127.0.0.1:8001')
    msg = one_issue(write(tmp_path, bad))
    assert msg.startswith(f"{tmp_path}/{PROVIDERS_FILE}:9: YAML syntax error")
    assert "never closed" in msg


def test_unclosed_bracket(tmp_path: Path) -> None:
    bad = PROVIDERS.replace("models: [m1, m2]", "models: [m1, m2")
    msg = one_issue(write(tmp_path, bad))
    assert msg.startswith(f"{tmp_path}/{PROVIDERS_FILE}:")
    assert "YAML syntax error" in msg


def test_duplicate_key(tmp_path: Path) -> None:
    bad = MAPPINGS + "  m1:\n    provider: vllm\n"
    msg = one_issue(write(tmp_path, mappings=bad))
    assert msg == f'{tmp_path}/{MAPPINGS_FILE}:6: YAML syntax error: found duplicate key "m1"'


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, "- ollama\n- vllm\n"))
    assert msg == f"{tmp_path}/{PROVIDERS_FILE}:1: the top level must be a mapping, found a list"


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# nothing here\n\n  # still nothing\n"])
def test_empty_or_comment_only_file(tmp_path: Path, text: str) -> None:
    assert one_issue(write(tmp_path, text)) == f"{tmp_path}/{PROVIDERS_FILE}: file is empty"


def test_missing_file(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / MAPPINGS_FILE).unlink()
    assert one_issue(tmp_path) == f"{tmp_path}/{MAPPINGS_FILE}: file not found"


def test_both_files_missing(tmp_path: Path) -> None:
    assert issues(tmp_path) == [
        f"{tmp_path}/{PROVIDERS_FILE}: file not found",
        f"{tmp_path}/{MAPPINGS_FILE}: file not found",
    ]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / PROVIDERS_FILE).mkdir()
    (tmp_path / MAPPINGS_FILE).write_text(MAPPINGS)
    assert one_issue(tmp_path) == f"{tmp_path}/{PROVIDERS_FILE}: is a directory, expected a YAML file"


# Tests run as root, for whom chmod 000 does not make a file unreadable. These make a file that no one
# can read: a symlink loop, a path through a regular file, bytes that are not text, and a FIFO (which
# would block a plain read forever).


def test_unreadable_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / MAPPINGS_FILE).write_text(MAPPINGS)
    os.symlink(PROVIDERS_FILE, tmp_path / PROVIDERS_FILE)
    msg = one_issue(tmp_path)
    assert msg.startswith(f"{tmp_path}/{PROVIDERS_FILE}: cannot read file: ")
    assert "symbolic links" in msg


def test_unreadable_config_dir_is_a_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "config"
    not_a_dir.write_text("I am a file")
    found = issues(not_a_dir)
    assert found == [
        f"{not_a_dir}/{PROVIDERS_FILE}: cannot read file: Not a directory",
        f"{not_a_dir}/{MAPPINGS_FILE}: cannot read file: Not a directory",
    ]


def test_unreadable_not_utf8(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, b"version: 1\nproviders: \xff\xfe\n"))
    assert msg == f"{tmp_path}/{PROVIDERS_FILE}: not UTF-8 text (invalid start byte at byte 22)"


@pytest.mark.timeout(10)
def test_unreadable_fifo_does_not_block(tmp_path: Path) -> None:
    (tmp_path / MAPPINGS_FILE).write_text(MAPPINGS)
    os.mkfifo(tmp_path / PROVIDERS_FILE)
    assert one_issue(tmp_path) == f"{tmp_path}/{PROVIDERS_FILE}: is not a regular file, expected a YAML file"


def test_unreadable_socket_file(tmp_path: Path) -> None:
    (tmp_path / MAPPINGS_FILE).write_text(MAPPINGS)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / PROVIDERS_FILE))
        assert "is not a regular file" in one_issue(tmp_path)


# --------------------------------------------------------------------------- schema


def test_wrong_type(tmp_path: Path) -> None:
    bad = PROVIDERS.replace("    models: [m1, m2]\n", "    models: [m1, m2]\n    max_connections: lots\n")
    msg = one_issue(write(tmp_path, bad))
    assert msg.startswith(
        f"{tmp_path}/{PROVIDERS_FILE}:7: providers.ollama.max_connections: Input should be a valid integer"
    )
    assert "(got 'lots')" in msg


def test_wrong_type_list_instead_of_mapping(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, mappings="models:\n  - m1\n"))
    assert msg.startswith(f"{tmp_path}/{MAPPINGS_FILE}:1: models: Input should be a valid dictionary")


def test_wrong_type_in_list_item(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace("models: [m1, m2]", "models: [m1, 5]")))
    assert msg.startswith(
        f"{tmp_path}/{PROVIDERS_FILE}:6: providers.ollama.models[1]: Input should be a valid dictionary"
    )


def test_wrong_enum_value(tmp_path: Path) -> None:
    bad = MAPPINGS.replace("    provider: vllm\n", "    provider: vllm\n    strategy: random\n")
    msg = one_issue(write(tmp_path, mappings=bad))
    assert msg.startswith(f"{tmp_path}/{MAPPINGS_FILE}:6: models.big.strategy: Input should be 'round_robin'")


@pytest.mark.parametrize(
    ("old", "new", "line", "path"),
    [
        (
            "    models: [m1, m2]\n",
            "    models: [m1, m2]\n    helth: {interval_s: 5}\n",
            7,
            "providers.ollama.helth",
        ),
        (
            "        capabilities: [chat, tools]\n",
            "        capabilites: [chat, tools]\n",
            12,
            "providers.vllm.models[0].capabilites",
        ),
        ("version: 1\n", "version: 1\nprovider: {}\n", 2, "provider"),
    ],
)
def test_unknown_key(tmp_path: Path, old: str, new: str, line: int, path: str) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace(old, new)))
    assert msg.startswith(f"{tmp_path}/{PROVIDERS_FILE}:{line}: {path}: unknown key (check the spelling")


def test_unknown_key_nested_in_mappings(tmp_path: Path) -> None:
    bad = "defaults:\n  retries:\n    max_attempts: 2\n    retry_on: [500]\n" + MAPPINGS
    msg = one_issue(write(tmp_path, mappings=bad))
    assert msg.startswith(f"{tmp_path}/{MAPPINGS_FILE}:4: defaults.retries.retry_on: unknown key")


def test_url_without_scheme(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace("http://127.0.0.1:8001", "127.0.0.1:8001")))
    assert msg == (
        f"{tmp_path}/{PROVIDERS_FILE}:9: providers.vllm.base_url: "
        "URL needs a scheme http:// or https:// (got '127.0.0.1:8001')"
    )


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001/v1", "http://127.0.0.1:8001/v1/"])
def test_base_url_ending_in_v1(tmp_path: Path, url: str) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace("http://127.0.0.1:8001", url)))
    assert msg == (
        f"{tmp_path}/{PROVIDERS_FILE}:9: providers.vllm.base_url: "
        "leave out the /v1 suffix; the gateway adds the API path itself"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:99999", "bad port in"),
        ("http://:8001", "URL has no host"),
        ("ftp://h:21", "URL needs a scheme"),
    ],
)
def test_bad_url(tmp_path: Path, url: str, message: str) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace("http://127.0.0.1:8001", url)))
    assert msg.startswith(f"{tmp_path}/{PROVIDERS_FILE}:9: providers.vllm.base_url: {message}")


def test_unknown_provider_type(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace("type: vllm", "type: vlm")))
    assert msg.startswith(
        f"{tmp_path}/{PROVIDERS_FILE}:8: providers.vllm.type: unknown provider type 'vlm'; expected one of"
    )
    assert "'openai_compatible'" in msg


def test_missing_type(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace("    type: vllm\n", "")))
    assert msg == (
        f"{tmp_path}/{PROVIDERS_FILE}:7: providers.vllm: "
        "missing `type` (one of ollama, llamacpp, vllm, openai, anthropic, openai_compatible)"
    )


def test_missing_required_key(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace("    base_url: http://127.0.0.1:8001\n", "")))
    assert msg == f"{tmp_path}/{PROVIDERS_FILE}:7: providers.vllm.base_url: required key is missing"
    assert (
        one_issue(write(tmp_path, "version: 1\n"))
        == f"{tmp_path}/{PROVIDERS_FILE}:1: providers: required key is missing"
    )


def test_cloud_provider_defaults_base_url(tmp_path: Path) -> None:
    text = "providers:\n  openai:\n    type: openai\n    api_key_env: OPENAI_API_KEY\n    models: [gpt-4o-mini]\n"
    cfg = load_config(write(tmp_path, text, "models:\n  gpt-4o-mini: {provider: openai}\n"))
    assert cfg.providers.providers["openai"].base_url == "https://api.openai.com"


def test_bad_provider_name_and_api_key_env(tmp_path: Path) -> None:
    bad = PROVIDERS.replace("  vllm:\n", "  bad name!:\n").replace(
        "    models: [m1, m2]\n", "    models: [m1, m2]\n    api_key_env: my-key\n"
    )
    found = issues(write(tmp_path, bad, "models: {}\n"))
    assert found[0].startswith(
        f"{tmp_path}/{PROVIDERS_FILE}:7: providers.ollama.api_key_env: String should match"
    )
    assert found[1].startswith(
        f"{tmp_path}/{PROVIDERS_FILE}:8: providers.bad name![key]: String should match"
    )


def test_health_endpoint_must_be_a_path(tmp_path: Path) -> None:
    bad = PROVIDERS.replace(
        "    models: [m1, m2]\n", "    models: [m1, m2]\n    health:\n      endpoint: health\n"
    )
    msg = one_issue(write(tmp_path, bad))
    assert msg.startswith(
        f"{tmp_path}/{PROVIDERS_FILE}:8: providers.ollama.health.endpoint: must start with '/'"
    )


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("    provider: vllm\n    deployments: [{provider: vllm}]\n", "give either `provider`"),
        ("    strategy: weighted\n", "a route needs `provider` or `deployments`"),
        ("    upstream: x\n    deployments: [{provider: vllm}]\n", "`upstream` goes with `provider`"),
        ("    provider: vllm\n    params: {stream: true}\n", "params may not set `model` or `stream`"),
    ],
)
def test_route_forms(tmp_path: Path, route: str, message: str) -> None:
    msg = one_issue(write(tmp_path, mappings="models:\n  big:\n" + route))
    assert msg.startswith(f"{tmp_path}/{MAPPINGS_FILE}:2: models.big: {message}")


def test_pattern_needs_a_wildcard_and_a_valid_template(tmp_path: Path) -> None:
    bad = (
        MAPPINGS
        + "patterns:\n  - match: plain\n    provider: ollama\n  - match: 'o/*'\n    provider: ollama\n    upstream: '{2}'\n"
    )
    found = issues(write(tmp_path, mappings=bad))
    assert found == [
        f"{tmp_path}/{MAPPINGS_FILE}:7: patterns[0].match: "
        "a pattern needs a wildcard (* or ?); put a plain name under `models`",
        f"{tmp_path}/{MAPPINGS_FILE}:9: patterns[1]: upstream template {{2}} is not one of {{0}}..{{1}}",
    ]


def test_several_errors_in_both_files_reported_together(tmp_path: Path) -> None:
    providers = PROVIDERS.replace("type: vllm", "type: vlm").replace(
        "http://127.0.0.1:11434", "127.0.0.1:11434"
    )
    mappings = MAPPINGS.replace("    provider: ollama\n", "    provder: ollama\n") + "  x:\n    provider: 5\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, providers, mappings))
    where = [(i.file, i.line, i.path) for i in info.value.issues]
    p, m = f"{tmp_path}/{PROVIDERS_FILE}", f"{tmp_path}/{MAPPINGS_FILE}"
    assert where == [
        (p, 5, "providers.ollama.base_url"),
        (p, 8, "providers.vllm.type"),
        (m, 3, "models.m1.provder"),
        (m, 7, "models.x.provider"),
    ]
    assert len(info.value.errors) == 4
    assert str(info.value).count("\n") == 3


def test_issue_formatting() -> None:
    assert str(ConfigIssue("p.yaml", 3, "a.b", "bad")) == "p.yaml:3: a.b: bad"
    assert str(ConfigIssue("p.yaml", None, "", "bad")) == "p.yaml: bad"
    warning = ConfigIssue("p.yaml", 3, "a", "hmm", "warning")
    assert str(warning) == "p.yaml:3: a: warning: hmm"
    assert warning.as_dict() == {
        "file": "p.yaml",
        "line": 3,
        "path": "a",
        "message": "hmm",
        "severity": "warning",
    }
    err = ConfigError([warning, ConfigIssue("p.yaml", 1, "", "bad")])
    assert [i.message for i in err.errors] == ["bad"]


def test_models_must_be_a_list(tmp_path: Path) -> None:
    msg = one_issue(write(tmp_path, PROVIDERS.replace("models: [m1, m2]", "models: m1")))
    assert msg.startswith(
        f"{tmp_path}/{PROVIDERS_FILE}:6: providers.ollama.models: Input should be a valid tuple"
    )


def test_empty_value_is_null(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path, PROVIDERS.replace("    models: [m1, m2]\n", "    models: [m1, m2]\n    description:\n")
        )
    )
    assert cfg.providers.providers["ollama"].description is None
