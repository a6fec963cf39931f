#!/usr/bin/env python3
"""Regenerate the key reference in docs/configuration.md from the Pydantic models.

The tables between the BEGIN/END markers are generated from the JSON Schemas (types, defaults,
descriptions, examples) that `aib schema` writes, so the reference cannot drift from the loader.

    python scripts/gen_config_docs.py          # rewrite the tables
    python scripts/gen_config_docs.py --check  # exit 1 when docs/configuration.md is out of date
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from aib.config.jsonschema import PROVIDER_DEFS, build_schema, model_classes
from aib.config.plan import DEFAULT_HEALTH_PATHS
from aib.config.schema import MappingsFile, ProvidersFile

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED KEY REFERENCE: scripts/gen_config_docs.py -->"
END = "<!-- END GENERATED KEY REFERENCE -->"

# (anchor, heading, root model, $defs names shown in this table)
SECTIONS: tuple[tuple[str, str, type[BaseModel], tuple[str, ...]], ...] = (
    ("providers-file", "`providers.yaml`: top level", ProvidersFile, ("ProvidersFile",)),
    ("provider", "`providers.<name>`: one provider", ProvidersFile, PROVIDER_DEFS),
    ("provider-models", "`providers.<name>.models[]`: one model", ProvidersFile, ("ModelSpec",)),
    ("provider-health", "`providers.<name>.health`", ProvidersFile, ("HealthCheck",)),
    ("provider-tls", "`providers.<name>.tls`", ProvidersFile, ("Tls",)),
    ("provider-signals", "`providers.<name>.signals` (ollama, llamacpp, vllm)", ProvidersFile, ("Signals",)),
    ("mappings-file", "`model-mappings.yaml`: top level", MappingsFile, ("MappingsFile",)),
    ("auth", "`auth`: client keys and limits", MappingsFile, ("Auth",)),
    ("defaults", "`defaults`", MappingsFile, ("Defaults",)),
    ("defaults-timeouts", "`defaults.timeouts`", MappingsFile, ("Timeouts",)),
    ("defaults-retries", "`defaults.retries`", MappingsFile, ("Retries",)),
    ("defaults-breaker", "`defaults.breaker`", MappingsFile, ("Breaker",)),
    ("defaults-balance", "`defaults.balance`", MappingsFile, ("Balance",)),
    ("defaults-cache", "`defaults.cache`: the response cache of routes", MappingsFile, ("CacheRule",)),
    ("route", "`models.<name>`: one route", MappingsFile, ("Route",)),
    ("route-deployments", "`models.<name>.deployments[]`: one deployment", MappingsFile, ("Deployment",)),
    ("route-timeouts", "`models.<name>.timeouts`", MappingsFile, ("TimeoutsPatch",)),
    ("route-balance", "`models.<name>.balance`", MappingsFile, ("BalancePatch",)),
    ("route-cache", "`models.<name>.cache`", MappingsFile, ("CacheRulePatch",)),
    ("patterns", "`patterns[]`: one pattern", MappingsFile, ("Pattern",)),
    ("capabilities", "`capabilities.<name>`: one capability rule", MappingsFile, ("CapabilityRule",)),
    ("cache", "`cache`: where cached answers live", MappingsFile, ("CacheStore",)),
    ("redis", "`redis`: the server replicas share", MappingsFile, ("RedisSettings",)),
    ("redis-sentinel", "`redis.sentinel`", MappingsFile, ("Sentinel",)),
)
INTROS = {
    "providers-file": "The file `config/providers.yaml`: the servers the gateway routes to.",
    "provider": "Keys of every provider; `type` says which kind of server it is and allows a few more keys.",
    "mappings-file": "The file `config/model-mappings.yaml`: the names clients ask for and where they go.",
}
ANCHOR_OF = {d: anchor for anchor, _, _, defs in SECTIONS for d in defs}
ANCHOR_OF.update({d: "provider" for d in PROVIDER_DEFS})
TYPE_OF = {d: build_schema(ProvidersFile)["$defs"][d]["properties"]["type"]["const"] for d in PROVIDER_DEFS}


def _flow(v: Any) -> str:
    """A value as short YAML flow text."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_flow(k)}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, int | float):
        return str(v)
    s = str(v)
    return s if re.fullmatch(r"[A-Za-z/][A-Za-z0-9_.\-/:@ ,]*", s) and not s.endswith(" ") else json.dumps(s)


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def _bounds(p: dict[str, Any]) -> str:
    parts = []
    for key, sym in (
        ("exclusiveMinimum", ">"),
        ("minimum", "≥"),
        ("exclusiveMaximum", "<"),
        ("maximum", "≤"),
    ):
        if key in p:
            parts.append(f"{sym} {_flow(p[key])}")
    return f" ({', '.join(parts)})" if parts else ""


def _type(p: dict[str, Any]) -> str:
    if "$ref" in p:
        name = p["$ref"].rsplit("/", 1)[-1]
        return f"mapping ([keys](#{ANCHOR_OF[name]}))"
    if "const" in p:
        return _code(_flow(p["const"]))
    if "enum" in p:
        return "one of " + ", ".join(_code(_flow(x)) for x in p["enum"])
    for key in ("anyOf", "oneOf"):
        if key in p:
            parts = [_type(x) for x in p[key] if x != {"type": "null"}]
            if key == "oneOf" and all("$ref" in x for x in p[key]):
                return "provider mapping ([keys](#provider))"
            return " or ".join(dict.fromkeys(parts))
    kind = p.get("type")
    if kind == "array":
        return "list of " + _type(p.get("items", {}))
    if kind == "object":
        for key in ("patternProperties", "additionalProperties"):
            value = p.get(key)
            if isinstance(value, dict) and value:
                inner = next(iter(value.values())) if key == "patternProperties" else value
                return "mapping: name → " + _type(inner)
        return "mapping of any keys"
    names = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
    return names.get(str(kind), "any") + _bounds(p)


def _default(cls: type[BaseModel], field: str, prop: dict[str, Any]) -> str:
    info = cls.model_fields[field]
    if info.is_required():
        return "**required**"
    if info.default_factory is not None and "$ref" in prop:
        return "(defaults of its keys)"
    value = info.get_default(call_default_factory=True)
    if value is None or value is PydanticUndefined:
        return "none"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return _code(_flow(value))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


def _rows(root: type[BaseModel], defs: tuple[str, ...]) -> list[str]:
    schema = build_schema(root)
    nodes = {**schema["$defs"], root.__name__: schema}
    classes = model_classes(root)
    fields: dict[str, list[str]] = {}
    for d in defs:
        for f in nodes[d].get("properties", {}):
            fields.setdefault(f, []).append(d)
    if "type" in fields:  # a provider's kind first: it decides the rest
        fields = {"type": fields.pop("type"), **fields}
    rows = ["| Key | Type | Default | Meaning | Example |", "| --- | --- | --- | --- | --- |"]
    for f, owners in fields.items():
        prop = nodes[owners[0]]["properties"][f]
        meaning = prop.get("description", "")
        if len(defs) > 1 and f == "type":
            kind = "one of " + ", ".join(_code(TYPE_OF[d]) for d in owners)
            default = "**required**"
        else:
            kind = _type(prop)
            by_def = {d: _default(classes[d], f, nodes[d]["properties"][f]) for d in owners}
            if len(set(by_def.values())) == 1:
                default = next(iter(by_def.values()))
            else:
                common = max(set(by_def.values()), key=list(by_def.values()).count)
                default = "; ".join(
                    [common + " (other types)"]
                    + [f"{by_def[d]} (`{TYPE_OF[d]}`)" for d in owners if by_def[d] != common]
                )
            if len(owners) < len(defs):
                meaning = "Only for type " + ", ".join(_code(TYPE_OF[d]) for d in owners) + ". " + meaning
        examples = prop.get("examples") or []
        example = _code(_flow(examples[0])) if examples else ""
        rows.append(
            f"| {_code(f)} | {_cell(kind)} | {_cell(default)} | {_cell(meaning)} | {_cell(example)} |"
        )
    return rows


def _provider_types() -> list[str]:
    schema = build_schema(ProvidersFile)
    rows = ["| `type` | What it is | Default `base_url` | Default health path |", "| --- | --- | --- | --- |"]
    for d in PROVIDER_DEFS:
        node = schema["$defs"][d]
        t = TYPE_OF[d]
        base = node["properties"]["base_url"].get("default")
        rows.append(
            f"| {_code(t)} | {_cell(node.get('description', ''))} | {_code(base) if base else '**required**'} "
            f"| {_code(DEFAULT_HEALTH_PATHS[t])} |"
        )
    return rows


def render_reference() -> str:
    out = [BEGIN, ""]
    for anchor, heading, root, defs in SECTIONS:
        schema = build_schema(root)
        node = schema if defs == (root.__name__,) else schema["$defs"][defs[0]]
        out.append(f'<a id="{anchor}"></a>')
        out.append(f"### {heading}")
        out.append("")
        intro = INTROS.get(anchor) or node.get("description", "")
        if intro:
            out.extend([_cell(intro), ""])
        out.extend(_rows(root, defs))
        out.append("")
        if anchor == "provider":
            out.extend(_provider_types())
            out.append("")
    out.append(END)
    return "\n".join(out)


def update(text: str) -> str:
    """``text`` with the generated block replaced (markers must be present)."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render_reference() + text[end:]


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    new = update(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC} is out of date: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        print(f"{DOC} is up to date")
        return 0
    if new != text:
        DOC.write_text(new, encoding="utf-8")
        print(f"wrote {DOC}")
    else:
        print(f"{DOC} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
