"""JSON Schemas of the two config files, generated from the Pydantic models.

Editors validate and complete ``providers.yaml`` and ``model-mappings.yaml`` with them (the files'
first line is ``# yaml-language-server: $schema=schemas/<name>.schema.json``); ``aib schema`` writes
them and ``aib schema --check`` fails when the shipped ones no longer match the models.

The schemas say what the loader accepts: besides Pydantic's own output they allow the bare-string
shorthand of ``models:`` entries, forbid provider names the loader rejects, carry the defaults of
nested blocks, and fill in a description and an example for every key that lacks one in
``aib.config.schema`` (the same texts feed ``docs/configuration.md``).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from aib.config.schema import MappingsFile, ProvidersFile

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "providers.schema.json": ProvidersFile,
    "model-mappings.schema.json": MappingsFile,
}
_ROOTS: dict[str, tuple[str, str, str]] = {
    # model -> ($id, title, description)
    "ProvidersFile": (
        "urn:ai-backend-unified:config:providers.schema.json",
        "providers.yaml",
        "The inference servers ai-backend-unified routes to (config/providers.yaml). "
        "Every key is described in docs/configuration.md.",
    ),
    "MappingsFile": (
        "urn:ai-backend-unified:config:model-mappings.schema.json",
        "model-mappings.yaml",
        "Which model names clients may ask for and where each goes (config/model-mappings.yaml). "
        "Every key is described in docs/configuration.md.",
    ),
}
PROVIDER_DEFS = (
    "OllamaProvider",
    "LlamaCppProvider",
    "VllmProvider",
    "OpenAIProvider",
    "AnthropicProvider",
    "OpenAICompatibleProvider",
    "LiteLLMSdkProvider",
)

# Descriptions for keys (and models: field "") that have none in aib.config.schema. "*Provider" is
# every provider type. A test fails when schema.py gains a description that is also filled here.
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("*Provider", "type"): "Kind of server: ollama, llamacpp, vllm, openai, anthropic, openai_compatible or "
    "litellm_sdk (through the LiteLLM SDK adapter). "
    "Selects the keys allowed here and how the gateway calls, probes and discovers the server.",
    ("*Provider", "health"): "How the gateway probes this provider (see `providers.<name>.health`).",
    ("OpenAIProvider", "base_url"): "Root URL of the OpenAI API, no /v1 suffix; change it only for a proxy "
    "in front of OpenAI.",
    ("OpenAIProvider", "organization"): "OpenAI organization id, sent as the OpenAI-Organization header.",
    ("AnthropicProvider", "base_url"): "Root URL of the Anthropic API, no /v1 suffix; change it only for a "
    "proxy in front of Anthropic.",
    ("ModelSpec", "description"): "Free text about the model, informational.",
    ("MappingsFile", "version"): "File format version.",
    ("MappingsFile", "defaults"): "Settings of every route that does not set its own.",
    ("Defaults", ""): "Settings of every route that does not set its own.",
    ("Defaults", "timeouts"): "Time limits of every request (a route's `timeouts` overrides single values).",
    ("Defaults", "retries"): "How many upstream attempts a request may make, and which statuses move on.",
    ("Defaults", "breaker"): "The circuit breaker of every deployment.",
    ("Retries", ""): "How many upstream attempts a request may make, and which statuses move on.",
    ("Breaker", ""): "Per-deployment circuit breaker: after `failure_threshold` failures in a row the "
    "deployment is skipped for `cooldown_s`, then one trial request decides. A health probe that finds "
    "the server up ends the cool-down at once (unless the server asked for the pause with Retry-After), "
    "and when breakers shut out every deployment of a request while probes say some are up, the request "
    "goes to those (panic routing) instead of a 503.",
    ("TimeoutsPatch", ""): "A route's own time limits; each key left out keeps `defaults.timeouts`.",
    ("TimeoutsPatch", "connect_s"): "TCP connect, per attempt.",
    ("TimeoutsPatch", "first_byte_s"): "From sending the request to the first response byte, per attempt.",
    ("TimeoutsPatch", "total_s"): "Whole request across all attempts.",
    ("Deployment", "provider"): "Name of a provider in providers.yaml.",
    ("Route", "timeouts"): "This route's own time limits; keys left out keep `defaults.timeouts`.",
    ("Route", "max_attempts"): "This route's own `defaults.retries.max_attempts`.",
    ("Route", "description"): "Free text, informational.",
    ("Pattern", "provider"): "Name of the provider that matching names go to.",
    ("Pattern", "fallbacks"): "Routes tried, in order, when the provider fails a name this pattern matched.",
    ("Pattern", "description"): "Free text, informational.",
}

# One example value per key (a `const` key is its own example); each must validate against its key's schema (a test checks that).
EXAMPLES: dict[tuple[str, str], Any] = {
    ("ProvidersFile", "version"): 1,
    ("ProvidersFile", "providers"): {"ollama": {"type": "ollama", "base_url": "http://127.0.0.1:11434"}},
    ("*Provider", "base_url"): "http://127.0.0.1:11434",
    ("*Provider", "enabled"): False,
    ("*Provider", "description"): "Ollama on the lab workstation",
    ("*Provider", "models"): [{"name": "llama3.1:8b", "capabilities": ["chat", "tools"]}, "mistral:7b"],
    ("*Provider", "discovery"): True,
    ("*Provider", "health"): {"interval_s": 30, "timeout_s": 5},
    ("*Provider", "api_key_env"): "OPENAI_API_KEY",
    ("*Provider", "max_connections"): 32,
    ("*Provider", "tls"): {"ca_file": "certs/lab-ca.pem"},
    ("*Provider", "hardware"): "1x GPU, 24 GB",
    ("*Provider", "tags"): ["gpu", "lab"],
    ("OpenAIProvider", "base_url"): "https://api.openai.com",
    ("OpenAIProvider", "organization"): "org-lab",
    ("AnthropicProvider", "base_url"): "https://api.anthropic.com",
    ("AnthropicProvider", "max_tokens"): 8192,
    ("*Provider", "api"): "openai",
    ("*Provider", "responses_api"): True,
    ("ModelSpec", "keep_alive"): "30m",
    ("OpenAICompatibleProvider", "api_prefix"): "/api/v1",
    ("*Provider", "signals"): {"interval_s": 1, "stale_after_s": 5},
    ("Signals", "enabled"): False,
    ("Signals", "interval_s"): 1,
    ("Signals", "timeout_s"): 0.5,
    ("Signals", "stale_after_s"): 5,
    ("HealthCheck", "interval_s"): 30,
    ("HealthCheck", "timeout_s"): 5,
    ("HealthCheck", "enabled"): False,
    ("ModelSpec", "name"): "llama3.1:8b",
    ("ModelSpec", "capabilities"): ["chat", "code"],
    ("ModelSpec", "context_length"): 32768,
    ("ModelSpec", "description"): "4-bit, instruction-tuned",
    ("MappingsFile", "version"): 1,
    ("MappingsFile", "auth"): {"mode": "keys"},
    ("Auth", "mode"): "keys",
    ("Auth", "reserve_tokens"): 4096,
    ("MappingsFile", "defaults"): {"strategy": "least_outstanding"},
    ("MappingsFile", "models"): {"llama3.1:8b": {"provider": "ollama"}},
    ("MappingsFile", "aliases"): {"default": "llama3.1:8b"},
    ("MappingsFile", "patterns"): [{"match": "ollama/*", "provider": "ollama"}],
    ("MappingsFile", "capabilities"): {"code": {"prefer": ["qwen2.5-coder:7b"]}},
    ("MappingsFile", "fallbacks"): {"qwen2.5-coder:7b": ["llama3.1:8b"]},
    ("MappingsFile", "default_fallbacks"): ["llama3.1:8b"],
    ("Defaults", "strategy"): "least_outstanding",
    ("Defaults", "timeouts"): {"first_byte_s": 60},
    ("Defaults", "retries"): {"max_attempts": 2},
    ("Defaults", "breaker"): {"failure_threshold": 3},
    ("Defaults", "balance"): {"affinity_epsilon": 0.5, "tie_break": "round_robin"},
    ("Balance", "affinity_epsilon"): 0.5,
    ("Balance", "tie_break"): "round_robin",
    ("BalancePatch", "affinity_epsilon"): 1,
    ("BalancePatch", "tie_break"): "least_outstanding",
    ("Timeouts", "connect_s"): 1,
    ("Timeouts", "first_byte_s"): 60,
    ("Timeouts", "total_s"): 300,
    ("TimeoutsPatch", "connect_s"): 1,
    ("TimeoutsPatch", "first_byte_s"): 30,
    ("TimeoutsPatch", "total_s"): 120,
    ("Retries", "max_attempts"): 2,
    ("Retries", "retry_on_status"): [429, 503],
    ("Breaker", "failure_threshold"): 3,
    ("Breaker", "cooldown_s"): 60,
    ("Deployment", "provider"): "llama_cpp_python",
    ("Deployment", "upstream"): "llama-cpp-default",
    ("Deployment", "weight"): 3,
    ("Route", "provider"): "ollama",
    ("Route", "upstream"): "qwen2.5-coder:7b",
    ("Route", "deployments"): [{"provider": "gpu1", "weight": 3}, {"provider": "gpu2", "weight": 1}],
    ("Route", "strategy"): "weighted",
    ("Route", "balance"): {"affinity_epsilon": 1},
    ("Route", "aliases"): ["coder"],
    ("Route", "fallbacks"): ["llama3.1:8b"],
    ("Route", "timeouts"): {"first_byte_s": 30},
    ("Route", "max_attempts"): 2,
    ("Route", "critical"): True,
    ("Route", "params"): {"max_tokens": 512, "temperature": 0.2},
    ("Route", "description"): "Code completion for the lab",
    ("Pattern", "match"): "ollama/*",
    ("Pattern", "provider"): "ollama",
    ("Pattern", "upstream"): "{1}",
    ("Pattern", "fallbacks"): ["llama3.1:8b"],
    ("Pattern", "description"): "Any Ollama model by its own name",
    ("CapabilityRule", "prefer"): ["qwen2.5-coder:7b"],
    ("CapabilityRule", "only_preferred"): True,
    ("Auth", "store"): "redis",
    ("MappingsFile", "redis"): {"url": "redis://10.0.0.5:6379/0"},
    ("MappingsFile", "cache"): {"backend": "redis"},
    ("Defaults", "cache"): {"enabled": True, "ttl_s": 600},
    ("Route", "cache"): {"enabled": True, "when": "always"},
    ("CacheRule", "enabled"): True,
    ("CacheRule", "ttl_s"): 600,
    ("CacheRule", "when"): "always",
    ("CacheRule", "scope"): "shared",
    ("CacheRulePatch", "enabled"): True,
    ("CacheRulePatch", "ttl_s"): 86400,
    ("CacheRulePatch", "when"): "always",
    ("CacheRulePatch", "scope"): "shared",
    ("CacheStore", "backend"): "redis",
    ("CacheStore", "max_bytes"): 268435456,
    ("CacheStore", "max_entry_bytes"): 262144,
    ("RedisSettings", "url"): "rediss://redis.lab.example:6380/0",
    ("RedisSettings", "password_env"): "AIB_REDIS_PASSWORD",
    ("RedisSettings", "key_prefix"): "gw-lab:",
    ("RedisSettings", "connect_timeout_s"): 1,
    ("RedisSettings", "timeout_s"): 0.1,
    ("RedisSettings", "on_redis_error"): "deny",
    ("RedisSettings", "max_connections"): 32,
    ("RedisSettings", "cluster"): True,
    ("RedisSettings", "sentinel"): {"master": "mymaster", "nodes": ["10.0.0.5:26379"]},
    ("Sentinel", "master"): "mymaster",
}


def model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every Pydantic model reachable from ``root``'s fields, by class name (= ``$defs`` name)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ not in found:
                found[tp.__name__] = tp
                for field in tp.model_fields.values():
                    visit(field.annotation)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return found


def _fill_keys(def_name: str) -> tuple[str, ...]:
    return (def_name, "*Provider") if def_name in PROVIDER_DEFS else (def_name,)


def _lookup(table: dict[tuple[str, str], Any], def_name: str, field: str) -> Any:
    for key in _fill_keys(def_name):
        if (key, field) in table:
            return table[(key, field)]
    return None


def build_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    classes = model_classes(model)
    defs: dict[str, dict[str, Any]] = schema.setdefault("$defs", {})
    for name, node in [*defs.items(), (model.__name__, schema)]:
        cls = classes[name]
        if not node.get("description") and (text := _lookup(DESCRIPTIONS, name, "")):
            node["description"] = text
        for field, prop in node.get("properties", {}).items():
            if not prop.get("description") and (text := _lookup(DESCRIPTIONS, name, field)):
                prop["description"] = text
            example = prop["const"] if "const" in prop else _lookup(EXAMPLES, name, field)
            if "examples" not in prop and example is not None:
                prop["examples"] = [example]
            info = cls.model_fields[field]
            if "default" not in prop and info.default_factory is not None:
                default = info.get_default(call_default_factory=True)
                prop["default"] = (
                    default.model_dump(mode="json") if isinstance(default, BaseModel) else default
                )
            if field == "models" and prop.get("items") == {"$ref": "#/$defs/ModelSpec"}:
                prop["items"] = {
                    "anyOf": [
                        {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 200,
                            "description": "Shorthand: the model's name.",
                        },
                        {"$ref": "#/$defs/ModelSpec"},
                    ]
                }
            if "patternProperties" in prop and "additionalProperties" not in prop:
                prop["additionalProperties"] = False  # the loader rejects names not matching the pattern
    ident, title, description = _ROOTS[model.__name__]
    schema["$schema"] = SCHEMA_DRAFT
    schema["$id"] = ident
    schema["title"] = title
    schema["description"] = description
    return schema


def render_schema(model: type[BaseModel]) -> str:
    """The schema as written to disk: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build_schema(model), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_texts() -> dict[str, str]:
    return {fname: render_schema(model) for fname, model in SCHEMA_FILES.items()}


def write_schemas(directory: Path) -> list[Path]:
    """Write both schemas into ``directory`` (created if needed). Returns the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for fname, text in schema_texts().items():
        path = directory / fname
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            tmp = path.with_name(f".{fname}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            changed.append(path)
    return changed


def stale_schemas(directory: Path) -> list[str]:
    """One reason per schema file in ``directory`` that is missing or differs from the models."""
    problems = []
    for fname, text in schema_texts().items():
        path = directory / fname
        if not path.is_file():
            problems.append(f"{path} does not exist")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path} differs from the Pydantic models (aib.config.schema)")
    return problems


__all__ = [
    "DESCRIPTIONS",
    "EXAMPLES",
    "SCHEMA_FILES",
    "build_schema",
    "model_classes",
    "render_schema",
    "schema_texts",
    "stale_schemas",
    "write_schemas",
]
