"""Export the routing plan as a LiteLLM proxy config (``config/litellm-unified.yaml``).

The file is generated, never edited: ``aib generate`` writes it and ``aib generate --check`` says
whether it is current. Its header records a hash of the two source files and a hash of its own body,
so a stale file (the sources changed) and a hand-edited one (the body no longer matches its hash)
are told apart.

The forms follow what LiteLLM itself reads (litellm 1.108.x):

* one ``model_list`` entry per deployment; a load-balanced group is several entries with the same
  ``model_name``, each with its own ``model_info.id`` (and ``weight`` when the strategy is weighted);
* Ollama as ``ollama_chat/<model>`` (``ollama/<model>`` for embedding-only models, which LiteLLM
  embeds only through ``ollama/``) with ``api_base`` = the server root, without ``/v1``;
* llama.cpp, vLLM and other OpenAI-compatible servers as ``openai/<model>`` with ``api_base`` =
  ``<base_url>/v1`` and an ``api_key`` (the OpenAI client needs one; a placeholder when none is set);
* ``litellm_sdk`` providers as their own LiteLLM model string (``litellm_model``), ``api_base`` and
  ``litellm_params``: LiteLLM calls those SDKs itself, no adapter in between;
* keys only as ``os.environ/NAME``;
* patterns as LiteLLM wildcards: ``model_name: "ollama/*"`` with ``model: "ollama_chat/*"``, where
  LiteLLM puts the request's wildcard parts into the ``*`` of ``model`` in order;
* aliases as ``router_settings.model_group_alias``; fallbacks as ``router_settings.fallbacks``, one
  ``{name: [chain]}`` per route and again per alias (LiteLLM looks the chain up by the name asked for);
* ``capability/<name>`` as a hidden alias to the first route plus a fallback chain of the others.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aib.config.load import LoadedConfig
from aib.config.plan import CompiledPattern, Group, ProviderInfo, RoutingPlan, Target
from aib.config.schema import CAPABILITY_PREFIX

# our strategy -> LiteLLM routing_strategy. LiteLLM has no strict rotation: simple-shuffle picks at
# random (uniformly without weights), which spreads load like round robin on average. It reads no
# backend signals and has no session affinity: least_loaded becomes its in-flight count (least-busy),
# loaded_first and prefix_affinity a shuffle (a note in the generated file says so).
STRATEGIES = {
    "round_robin": "simple-shuffle",
    "weighted": "simple-shuffle",
    "least_outstanding": "least-busy",
    "latency": "latency-based-routing",
    "least_loaded": "least-busy",
    "loaded_first": "simple-shuffle",
    "prefix_affinity": "simple-shuffle",
}
NO_LITELLM_EQUIVALENT = frozenset({"loaded_first", "prefix_affinity"})
NO_KEY = "none"  # LiteLLM's openai/ client refuses to start without some key; local servers ignore it
SOURCES_LINE = "# sources-sha256: "
BODY_LINE = "# body-sha256: "
# litellm_params keys the exporter sets itself; a route's `params` may not override them
_RESERVED_PARAMS = frozenset(
    {
        "model",
        "api_base",
        "api_key",
        "organization",
        "weight",
        "timeout",
        "stream_timeout",
        "num_retries",
        "rpm",
        "tpm",
        "order",
    }
)
GeneratedState = Literal["fresh", "missing", "stale", "hand-edited"]


@dataclass(frozen=True)
class LiteLLMExport:
    """The rendered file and what could not be expressed in LiteLLM (also written into the file)."""

    text: str
    notes: tuple[str, ...]
    entries: int


def render_litellm(cfg: LoadedConfig, plan: RoutingPlan) -> str:
    """The whole file: header (generated, source and body hashes) and body. Same input, same bytes."""
    return export_litellm(cfg, plan).text


def export_litellm(cfg: LoadedConfig, plan: RoutingPlan) -> LiteLLMExport:
    ex = _Exporter(cfg, plan)
    body = ex.body()
    return LiteLLMExport(_header(cfg.sources_hash, body_hash(body)) + body, tuple(ex.notes), ex.entries)


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def _header(sources: str, body: str) -> str:
    return (
        "# GENERATED FILE - DO NOT EDIT.\n"
        "# Written by `aib generate` from providers.yaml and model-mappings.yaml (the config folder).\n"
        "# Change those files and run `aib generate` again; `aib generate --check` fails when this\n"
        "# file is stale (the sources changed since) or was edited by hand.\n"
        "# Runs in the LiteLLM proxy: litellm --config litellm-unified.yaml\n"
        f"{SOURCES_LINE}{sources}\n"
        f"{BODY_LINE}{body}\n"
    )


# --------------------------------------------------------------------------- freshness


def _parse_generated(text: str) -> tuple[dict[str, str], str | None]:
    """The header's hash fields and the body after the ``body-sha256`` line (None without one)."""
    fields: dict[str, str] = {}
    pos = 0
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        pos += len(line)
        for key, prefix in (("sources", SOURCES_LINE), ("body", BODY_LINE)):
            if line.startswith(prefix):
                fields[key] = line[len(prefix) :].strip()
        if "body" in fields:
            return fields, text[pos:]
    return fields, None


def generated_state(path: Path, expected: str) -> tuple[GeneratedState, str]:
    """Whether ``path`` holds ``expected``; if not, why: missing, stale or edited by hand."""
    name = path.name
    try:
        actual = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "missing", f"{path} does not exist; run `aib generate`"
    except (OSError, UnicodeDecodeError) as exc:
        return "hand-edited", f"{path} cannot be read as generated text ({exc}); run `aib generate`"
    want, _ = _parse_generated(expected)
    if actual == expected:
        return "fresh", f"{name} is up to date (sources-sha256 {want.get('sources')})"
    fields, body = _parse_generated(actual)
    if body is None:
        return "hand-edited", (
            f"{name} was edited by hand: its generated header (body-sha256) is gone; "
            "make the change in providers.yaml or model-mappings.yaml and run `aib generate`"
        )
    if body_hash(body) != fields["body"]:
        return "hand-edited", (
            f"{name} was edited by hand (its content no longer matches its body-sha256); "
            "make the change in providers.yaml or model-mappings.yaml and run `aib generate`"
        )
    if fields.get("sources") != want.get("sources"):
        return "stale", (
            f"{name} is stale: providers.yaml or model-mappings.yaml changed since it was generated "
            f"(sources-sha256 {fields.get('sources')}, now {want.get('sources')}); run `aib generate`"
        )
    return (
        "stale",
        f"{name} is stale: it was written by another version of `aib generate`; run `aib generate`",
    )


def check_generated(path: Path, expected: str) -> tuple[bool, str]:
    """(True, reason) when the file on disk is exactly what would be generated now, else (False, why)."""
    state, reason = generated_state(path, expected)
    return state == "fresh", reason


# --------------------------------------------------------------------------- patterns


def wildcard_model(glob: str, template: str) -> tuple[str | None, str]:
    """LiteLLM's form of an upstream template: ``{1}`` -> ``*``. (None, why) when it has none.

    LiteLLM knows only ``*`` and fills the ``*`` of the deployment's model with the request's
    wildcard parts, in order; it has no ``?``, no whole-name ``{0}``, no reordering or repeats.
    """
    if "?" in glob:
        return None, "LiteLLM wildcards have no '?'"
    if "*" in template:
        return None, "the upstream template contains a literal '*'"
    refs = [int(r) for r in re.findall(r"\{(\d+)\}", template)]
    if not refs:
        return template, ""  # a fixed upstream name: LiteLLM sends it as written
    n = glob.count("*")
    if refs != list(range(1, n + 1)):
        wanted = ", ".join(f"{{{i}}}" for i in range(1, n + 1))
        return None, f"LiteLLM can only put the {n} wildcard part(s) in order ({wanted}), not {template!r}"
    return re.sub(r"\{\d+\}", "*", template), ""


def _embed_only(prov: ProviderInfo, upstream: str) -> bool:
    caps = set(prov.capabilities.get(upstream, ()))
    return "embeddings" in caps and not caps & {"chat", "completion"}


def _litellm_specificity(glob: str) -> tuple[int, int]:
    # how LiteLLM orders wildcard routes: longest regex first, then the most regex syntax
    rx = re.escape(glob).replace(r"\*", "(.*)")
    return len(rx), sum(rx.count(c) for c in "*+?\\^$|()")


# --------------------------------------------------------------------------- the exporter


class _Exporter:
    def __init__(self, cfg: LoadedConfig, plan: RoutingPlan) -> None:
        self.cfg = cfg
        self.plan = plan
        self.notes: list[str] = []
        self.entries = 0
        self.ids: set[str] = set()
        self.exported: dict[str, Group] = {}
        for name, group in plan.groups.items():
            if group.origin != "models":
                continue  # discovered models exist only at run time
            if any(plan.providers[t.provider].enabled for t in group.targets):
                self.exported[name] = group
                if group.strategy in NO_LITELLM_EQUIVALENT and len(group.targets) > 1:
                    self.notes.append(
                        f"route {name!r}: LiteLLM has no {group.strategy}; its deployments are shuffled"
                    )
            else:
                self.notes.append(f"route {name!r}: every deployment is on a disabled provider; left out")
        self.default_lite = STRATEGIES[plan.default_strategy]

    # ---- model_list
    def _id(self, base: str) -> str:
        ident, n = base, 1
        while ident in self.ids:
            n += 1
            ident = f"{base}~{n}"
        self.ids.add(ident)
        return ident

    def _params(self, prov: ProviderInfo, upstream: str) -> dict[str, object]:
        if prov.type == "ollama":
            model = ("ollama/" if _embed_only(prov, upstream) else "ollama_chat/") + upstream
            params: dict[str, object] = {"model": model, "api_base": prov.base_url}
            if prov.api_key_env:
                params["api_key"] = f"os.environ/{prov.api_key_env}"
        elif prov.sdk is not None:  # litellm_sdk: the adapter's own model string, straight to LiteLLM
            params = {"model": prov.sdk.litellm_model(upstream)}
            if prov.sdk.api_base:
                params["api_base"] = prov.sdk.api_base
            if prov.api_key_env:
                params["api_key"] = f"os.environ/{prov.api_key_env}"
            params.update(prov.sdk.params)
        elif prov.type == "anthropic":
            params = {"model": f"anthropic/{upstream}", "api_base": prov.base_url}
            if prov.api_key_env:  # without one LiteLLM reads ANTHROPIC_API_KEY itself
                params["api_key"] = f"os.environ/{prov.api_key_env}"
        else:  # llamacpp, vllm, openai, openai_compatible: the OpenAI API under api_base
            params = {"model": f"openai/{upstream}", "api_base": prov.api_base}
            params["api_key"] = f"os.environ/{prov.api_key_env}" if prov.api_key_env else NO_KEY
            org = self._organization(prov.name)
            if org:
                params["organization"] = org
        return params

    def _organization(self, provider: str) -> str | None:
        spec = self.cfg.providers.providers.get(provider)
        return getattr(spec, "organization", None)

    def route_entries(self, name: str, group: Group) -> list[tuple[list[str], dict[str, object]]]:
        plan = self.plan
        targets = [t for t in group.targets if plan.providers[t.provider].enabled]
        skipped = [t.id for t in group.targets if not plan.providers[t.provider].enabled]
        weighted = group.strategy == "weighted" and len({t.weight for t in targets}) > 1
        out: list[tuple[list[str], dict[str, object]]] = []
        for i, t in enumerate(targets):
            comments: list[str] = []
            if i == 0:
                what = f"{len(targets)} deployments, {group.strategy}" if len(targets) > 1 else "1 deployment"
                comments.append(f"{name}: {what}" + (f" - {group.description}" if group.description else ""))
                if skipped:
                    comments.append(f"  left out (provider disabled): {', '.join(skipped)}")
            out.append((comments, self._entry(name, group, t, weighted)))
        return out

    def _entry(self, name: str, group: Group, t: Target, weighted: bool) -> dict[str, object]:
        plan = self.plan
        prov = plan.providers[t.provider]
        params = self._params(prov, t.upstream)
        if weighted:
            params["weight"] = _num(t.weight)
        if group.max_attempts != plan.default_max_attempts:
            params["num_retries"] = group.max_attempts - 1
        if group.timeouts != plan.default_timeouts:
            params["timeout"] = _num(group.timeouts.total_s)
            params["stream_timeout"] = _num(group.timeouts.first_byte_s)
        for key in sorted(group.params):
            if key in _RESERVED_PARAMS:
                self.notes.append(f"route {name!r}: params.{key} is set by the exporter itself; left out")
            else:
                params[key] = group.params[key]
        info: dict[str, object] = {"id": self._id(f"{name}@{t.id}")}
        if _embed_only(prov, t.upstream):
            info["mode"] = "embedding"  # LiteLLM's health checks and /model/info read it
        self.entries += 1
        return {"model_name": name, "litellm_params": params, "model_info": info}

    def pattern_entries(self) -> list[tuple[list[str], dict[str, object]]]:
        out: list[tuple[list[str], dict[str, object]]] = []
        exported: list[CompiledPattern] = []
        for p in self.plan.patterns:
            label = f"pattern #{p.index + 1} {p.glob!r}"
            prov = self.plan.providers[p.provider]
            if not prov.enabled:
                self.notes.append(f"{label}: provider {p.provider!r} is disabled; left out")
                continue
            model, why = wildcard_model(p.glob, p.upstream)
            if model is not None and prov.sdk is not None and prov.sdk.litellm_model(model) is None:
                model, why = None, "its provider maps model names one by one (litellm_model is a mapping)"
            if model is None:
                self.notes.append(f"{label} -> {p.upstream!r}: {why}; left out")
                continue
            comments = [f"{label} -> {p.provider} as {p.upstream!r}"]
            if not p.glob.endswith("*"):
                comments.append("  LiteLLM matches this as a prefix: longer names match too")
            if p.fallbacks:
                self.notes.append(
                    f"{label}: fallbacks {', '.join(p.fallbacks)} not exported (LiteLLM looks fallbacks "
                    "up by the requested name, which a pattern does not know in advance)"
                )
            params = self._params(prov, model)
            info: dict[str, object] = {"id": self._id(f"pattern-{p.index + 1}@{p.provider}")}
            out.append((comments, {"model_name": p.glob, "litellm_params": params, "model_info": info}))
            exported.append(p)
            self.entries += 1
        litellm_order = sorted(exported, key=lambda p: _litellm_specificity(p.glob), reverse=True)
        if [p.index for p in litellm_order] != [p.index for p in exported]:
            self.notes.append(
                "LiteLLM tries wildcard patterns longest first, not in file order: "
                + ", ".join(repr(p.glob) for p in litellm_order)
                + " (a name that two of them match may go elsewhere than in aib)"
            )
        return out

    # ---- router_settings
    def aliases(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for alias in sorted(self.plan.aliases):
            target = self.plan.aliases[alias]
            if target in self.exported:
                out[alias] = target
            else:
                self.notes.append(f"alias {alias!r} -> {target!r}: route left out, so is the alias")
        for cap, chain in self.capability_chains().items():
            out[CAPABILITY_PREFIX + cap] = {"model": chain[0], "hidden": True}
        return out

    def capability_chains(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for cap in sorted(self.plan.capabilities):
            res = self.plan.resolve(CAPABILITY_PREFIX + cap)
            if res is None or res.matched_by != "capability":
                continue  # an alias, route or pattern takes that name first
            chain = [g.name for g in res.chain if g.name in self.exported]
            if chain:
                out[cap] = chain
        return out

    def fallbacks(self) -> list[dict[str, list[str]]]:
        out: list[dict[str, list[str]]] = []
        for name, group in self.exported.items():
            chain = [f for f in group.fallbacks if f in self.exported]
            if not chain:
                continue
            out.append({name: chain})
            for alias in sorted(a for a, t in self.plan.aliases.items() if t == name):
                out.append({alias: chain})
        for cap, chain in self.capability_chains().items():
            if len(chain) > 1:
                out.append({CAPABILITY_PREFIX + cap: chain[1:]})
        return out

    def routing_groups(self) -> list[dict[str, object]]:
        """Routes whose strategy differs from the default one, grouped by LiteLLM strategy."""
        members: dict[str, list[str]] = {}
        for name, group in self.exported.items():
            enabled = [t for t in group.targets if self.plan.providers[t.provider].enabled]
            lite = STRATEGIES[group.strategy]
            if len(enabled) > 1 and lite != self.default_lite:
                members.setdefault(lite, []).append(name)
        taken = set(self.exported) | set(self.plan.aliases)
        groups: list[dict[str, object]] = []
        for lite in sorted(members):
            gname = f"aib-{lite}"
            while gname in taken:
                gname += "-group"
            groups.append({"group_name": gname, "models": members[lite], "routing_strategy": lite})
        return groups

    def router_settings(self) -> dict[str, object]:
        plan, d = self.plan, self.cfg.mappings.defaults
        rs: dict[str, object] = {"routing_strategy": self.default_lite}
        groups = self.routing_groups()
        if groups:
            rs["routing_groups"] = groups
        aliases = self.aliases()
        if aliases:
            rs["model_group_alias"] = aliases
        fallbacks = self.fallbacks()
        if fallbacks:
            rs["fallbacks"] = fallbacks
            rs["max_fallbacks"] = max(len(next(iter(f.values()))) for f in fallbacks)
        rs["num_retries"] = plan.default_max_attempts - 1
        rs["timeout"] = _num(plan.default_timeouts.total_s)
        rs["stream_timeout"] = _num(plan.default_timeouts.first_byte_s)
        rs["allowed_fails"] = d.breaker.failure_threshold - 1  # LiteLLM cools down after allowed_fails + 1
        rs["cooldown_time"] = _num(d.breaker.cooldown_s)
        return rs

    # ---- the body
    def body(self) -> str:
        lines: list[str] = []
        entries: list[tuple[list[str], dict[str, object]]] = []
        for name, group in self.exported.items():
            entries.extend(self.route_entries(name, group))
        entries.extend(self.pattern_entries())
        for prov in sorted(self.plan.providers.values(), key=lambda p: p.name):
            if prov.discovery and prov.enabled:
                self.notes.append(
                    f"provider {prov.name!r}: discovered models are not exported (LiteLLM serves only the "
                    "names listed here); list them under the provider's models to export them"
                )
            if not prov.enabled:
                self.notes.append(f"provider {prov.name!r} is disabled; left out")
        router = self.router_settings()
        self.notes.append("timeouts.connect_s and retries.retry_on_status have no LiteLLM setting")
        critical = [n for n, g in self.exported.items() if g.critical]
        if critical:
            self.notes.append(f"`critical` (reload rollback) of {', '.join(critical)} is aib's own")

        if self.notes:
            lines.append("# Not expressible in LiteLLM (aib's own engine does these):")
            lines.extend(f"#   - {_comment(n)}" for n in self.notes)
            lines.append("")
        lines.append("model_list:")
        for comments, entry in entries:
            lines.extend(f"  # {_comment(c)}" for c in comments)
            lines.extend(_item(entry, 1))
        if not entries:
            lines[-1] = "model_list: []"
        lines.append("")
        lines.append("router_settings:")
        lines.extend(_block(router, 1))
        lines.append("")
        lines.append("litellm_settings:")
        lines.append(
            "  drop_params: true  # drop request fields a provider does not support instead of failing"
        )
        lines.append("")
        lines.append("# The master key comes from LITELLM_MASTER_KEY in the environment, never this file.")
        lines.append("general_settings: {}")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- a small, strict YAML emitter
# Block style, keys in the order given, strings quoted whenever a YAML 1.1 reader (LiteLLM loads its
# config with PyYAML) or a YAML 1.2 reader could take them for anything but the same string.

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/:@+]*")
_SPECIAL_WORDS = frozenset(
    w
    for base in ("y", "yes", "n", "no", "true", "false", "on", "off", "null")
    for w in (base, base.capitalize(), base.upper())
)
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def _comment(text: str) -> str:
    return " ".join(text.split()) if len(text.splitlines()) > 1 else text


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() and abs(x) < 1e15 else x


def _scalar(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v)
        if "." not in text:  # 1e-05 -> 1.0e-05: PyYAML reads exponents only after a dot
            text = text.replace("e", ".0e", 1)
        return text
    s = str(v)
    if _PLAIN.fullmatch(s) and s not in _SPECIAL_WORDS and not s.endswith(":"):
        return s
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _inline(v: object) -> str | None:
    if isinstance(v, dict):
        return "{}" if not v else None
    if isinstance(v, list | tuple):
        return "[]" if not v else None
    return _scalar(v)


def _block(v: object, level: int) -> list[str]:
    pad = "  " * level
    lines: list[str] = []
    if isinstance(v, dict):
        for k, val in v.items():
            inline = _inline(val)
            if inline is not None:
                lines.append(f"{pad}{_scalar(str(k))}: {inline}")
            else:
                lines.append(f"{pad}{_scalar(str(k))}:")
                lines.extend(_block(val, level + 1))
    elif isinstance(v, list | tuple):
        for item in v:
            lines.extend(_item(item, level))
    else:  # pragma: no cover - callers pass containers
        lines.append(pad + _scalar(v))
    return lines


def _item(v: object, level: int) -> list[str]:
    """One sequence item at ``level``: ``- scalar`` or ``- key: ...`` with the rest indented under it."""
    pad = "  " * level
    inline = _inline(v)
    if inline is not None:
        return [f"{pad}- {inline}"]
    sub = _block(v, level + 1)
    return [f"{pad}- {sub[0].lstrip()}", *sub[1:]]
