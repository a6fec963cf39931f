"""What a reload changes: models, aliases and providers added, removed and changed (field by field)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from aib.config.plan import Group, ProviderInfo, RoutingPlan, Target

_SKIP_GROUP = {"name", "origin"}
_SKIP_PROVIDER = {"name", "api_base", "health_url"}  # both follow from base_url and the type
_MAX_VALUE = 120


@dataclass
class PlanDiff:
    models_added: list[str] = field(default_factory=list)
    models_removed: list[str] = field(default_factory=list)
    models_changed: dict[str, list[str]] = field(default_factory=dict)  # name -> "field: old -> new"
    providers_added: list[str] = field(default_factory=list)
    providers_removed: list[str] = field(default_factory=list)
    providers_changed: dict[str, list[str]] = field(default_factory=dict)
    aliases_added: list[str] = field(default_factory=list)
    aliases_removed: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # patterns, capabilities, defaults

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in dataclasses.fields(self))

    def changed_providers(self) -> set[str]:
        """Providers that are new or whose settings changed (what a reload probes)."""
        return set(self.providers_added) | set(self.providers_changed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "models": {
                "added": self.models_added,
                "removed": self.models_removed,
                "changed": self.models_changed,
            },
            "providers": {
                "added": self.providers_added,
                "removed": self.providers_removed,
                "changed": self.providers_changed,
            },
            "aliases": {"added": self.aliases_added, "removed": self.aliases_removed},
            "other": self.other,
        }

    def summary(self) -> str:
        """One line for the log: ``models +a -b ~c; providers +x``."""
        parts = []
        for what, added, removed, changed in (
            ("models", self.models_added, self.models_removed, list(self.models_changed)),
            ("providers", self.providers_added, self.providers_removed, list(self.providers_changed)),
            ("aliases", self.aliases_added, self.aliases_removed, []),
        ):
            items = [f"+{n}" for n in added] + [f"-{n}" for n in removed] + [f"~{n}" for n in changed]
            if items:
                parts.append(f"{what} {' '.join(items)}")
        parts.extend(self.other)
        return "; ".join(parts) if parts else "no routing change"


def lines_of(diff: Mapping[str, Any]) -> list[str]:
    """The diff (as :meth:`PlanDiff.as_dict` gives it) as ``+ model x`` / ``~ provider y: ...`` lines."""
    out: list[str] = []
    for kind, singular in (("models", "model"), ("providers", "provider"), ("aliases", "alias")):
        part = diff.get(kind) or {}
        out += [f"+ {singular} {n}" for n in part.get("added", [])]
        out += [f"- {singular} {n}" for n in part.get("removed", [])]
        for n, changes in (part.get("changed") or {}).items():
            out += [f"~ {singular} {n}: {c}" for c in changes]
    out += [f"~ {o}" for o in diff.get("other", [])]
    return out


def diff_plans(old: RoutingPlan, new: RoutingPlan) -> PlanDiff:
    d = PlanDiff()
    old_g = {n: g for n, g in old.groups.items() if g.origin == "models"}
    new_g = {n: g for n, g in new.groups.items() if g.origin == "models"}
    d.models_added = sorted(set(new_g) - set(old_g))
    d.models_removed = sorted(set(old_g) - set(new_g))
    for n in sorted(set(old_g) & set(new_g)):
        changes = _fields(old_g[n], new_g[n], _SKIP_GROUP)
        if changes:
            d.models_changed[n] = changes
    d.providers_added = sorted(set(new.providers) - set(old.providers))
    d.providers_removed = sorted(set(old.providers) - set(new.providers))
    for n in sorted(set(old.providers) & set(new.providers)):
        changes = _fields(old.providers[n], new.providers[n], _SKIP_PROVIDER)
        if changes:
            d.providers_changed[n] = changes
    old_a, new_a = set(old.aliases.items()), set(new.aliases.items())
    d.aliases_added = sorted(f"{a} -> {t}" for a, t in new_a - old_a)
    d.aliases_removed = sorted(f"{a} -> {t}" for a, t in old_a - new_a)
    old_p = [(p.glob, p.provider, p.upstream, p.fallbacks) for p in old.patterns]
    new_p = [(p.glob, p.provider, p.upstream, p.fallbacks) for p in new.patterns]
    if old_p != new_p:
        d.other.append(f"patterns: {_fmt([p[0] for p in old_p])} -> {_fmt([p[0] for p in new_p])}")
    for cap in sorted(set(old.capabilities) | set(new.capabilities)):
        a, b = old.capabilities.get(cap, ()), new.capabilities.get(cap, ())
        if a != b:
            d.other.append(f"capability/{cap}: {_fmt(a)} -> {_fmt(b)}")
    for attr in ("default_timeouts", "default_max_attempts", "default_retry_on_status", "default_strategy"):
        a, b = getattr(old, attr), getattr(new, attr)
        if a != b:
            d.other.append(f"defaults.{attr.removeprefix('default_')}: {_fmt(a)} -> {_fmt(b)}")
    return d


def _fields(old: Group | ProviderInfo, new: Group | ProviderInfo, skip: set[str]) -> list[str]:
    out = []
    for f in dataclasses.fields(old):
        if f.name in skip:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if _plain(a) != _plain(b):
            out.append(f"{f.name}: {_fmt(a)} -> {_fmt(b)}")
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump()
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, frozenset):
        return sorted(v)
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, Target):
        text = v.id if v.weight == 1.0 else f"{v.id}*{v.weight:g}"
    elif isinstance(v, tuple | list) and all(isinstance(x, Target) for x in v) and v:
        text = ", ".join(_fmt(x) for x in v)
    else:
        p = _plain(v)
        text = ", ".join(str(x) for x in p) if isinstance(p, list) else str(p)
        text = text if text else "(none)"
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."
