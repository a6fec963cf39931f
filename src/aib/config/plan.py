"""The RoutingPlan: the one immutable object the request path reads.

Built by :func:`aib.config.compile.compile_plan` from validated files. Resolving a requested model
name is a dict lookup for exact names, aliases and discovered models; patterns are tried in order
(their results cached) and capability requests are precomputed. A reload builds a new plan and
swaps one reference; requests in flight keep the plan they started with.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

import orjson

from aib.config.litellm_sdk import SdkOptions
from aib.config.schema import (
    CAPABILITY_PREFIX,
    Auth,
    Balance,
    CacheRule,
    CacheStore,
    HealthCheck,
    RedisSettings,
    Signals,
    Timeouts,
)

OLLAMA_DEFAULT_TAG = ":latest"  # Ollama names an untagged model NAME:latest
MatchKind = Literal["exact", "alias", "discovered", "pattern", "capability"]

DEFAULT_HEALTH_PATHS = {
    "ollama": "/api/tags",
    "llamacpp": "/v1/models",  # llama-server and llama-cpp-python both serve it; only llama-server has /health
    "vllm": "/health",
    "openai": "/v1/models",
    "anthropic": "/v1/models",
    "openai_compatible": "/v1/models",
    "litellm_sdk": "/health",  # the adapter's own: is LiteLLM loaded, is the provider's key set
}


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What the outbound adapters send for one upstream model (from providers.yaml)."""

    context_length: int | None = None
    keep_alive: str | int | None = None


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    name: str
    type: str
    base_url: str
    api_base: str  # where /chat/completions etc. live, e.g. http://127.0.0.1:8000/v1
    health_url: str
    health: HealthCheck
    api_key_env: str | None
    max_connections: int
    discovery: bool
    enabled: bool
    models: tuple[str, ...]
    capabilities: Mapping[str, tuple[str, ...]]  # upstream model -> capabilities
    description: str | None = None
    hardware: str | None = None
    sdk: SdkOptions | None = None  # type litellm_sdk: what the LiteLLM SDK adapter needs
    # the outbound adapter (aib.gateway.outbound): "ollama" or "anthropic" for their native APIs,
    # None for an OpenAI-compatible API (bytes passed through, nothing translated)
    wire: str | None = None
    # front-door APIs this provider takes as the client sent them: "ollama", "anthropic", "responses"
    native_apis: frozenset[str] = frozenset()
    model_settings: Mapping[str, ModelSettings] = field(default_factory=dict)  # upstream model -> settings
    max_tokens: int = 4096  # Anthropic (native): max_tokens when a request gives none
    proxy: str | None = None  # None: from the environment; "direct"; or an http:// URL
    ca_file: str | None = None  # absolute path: trust only these CAs (https)
    tls_verify: bool = True
    signals: Signals | None = None  # types ollama, llamacpp, vllm: how their load signals are polled


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment: one provider serving one upstream model. ``id`` keys all runtime state."""

    id: str
    provider: str
    upstream: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class RouteCache:
    """A route's response cache, compiled: only routes that cache have one."""

    ttl_s: float
    always: bool  # `when: always`; else only deterministic requests (temperature 0 or a seed)
    shared: bool  # `scope: shared`: one set of entries for every client key
    salt: bytes  # what else changes the answer: the route's name and its params (aib.cache.keys)

    @classmethod
    def compile(cls, rule: CacheRule, route: str, params: Mapping[str, object]) -> RouteCache | None:
        if not rule.enabled:
            return None
        # params are set on requests that lack them (the proxy), so they change answers too
        salt = orjson.dumps([route, dict(params)], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        return cls(rule.ttl_s, rule.when == "always", rule.scope == "shared", salt)


@dataclass(frozen=True, slots=True)
class Group:
    """A compiled route: what one model name means."""

    name: str
    targets: tuple[Target, ...]
    strategy: str
    timeouts: Timeouts
    max_attempts: int
    retry_on_status: frozenset[int]
    fallbacks: tuple[str, ...] = ()  # flattened chain of group names, in order
    params: Mapping[str, object] = field(default_factory=dict)
    critical: bool = False
    aliases: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    origin: str = "models"  # models | discovered | pattern
    description: str | None = None
    balance: Balance = field(default_factory=Balance)  # knobs of loaded_first and prefix_affinity
    cache: RouteCache | None = None  # None: this route's answers are not cached


@dataclass(frozen=True, slots=True)
class CompiledPattern:
    glob: str
    regex: re.Pattern[str]
    provider: str
    upstream: str  # template: {0} whole name, {1}.. wildcards
    fallbacks: tuple[str, ...]
    index: int

    def upstream_for(self, m: re.Match[str]) -> str:
        groups = (m.group(0), *m.groups())
        return re.sub(r"\{(\d+)\}", lambda r: groups[int(r.group(1))], self.upstream)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The answer to "where does model X go?"."""

    requested: str
    matched_by: MatchKind
    rule: str
    group: Group
    fallbacks: tuple[Group, ...]

    @property
    def chain(self) -> tuple[Group, ...]:
        return (self.group, *self.fallbacks)

    def explain(self) -> dict[str, object]:
        """The same structure `aib explain` prints and `GET /admin/route` returns."""
        return {
            "requested": self.requested,
            "matched_by": self.matched_by,
            "rule": self.rule,
            "route": self.group.name,
            "strategy": self.group.strategy,
            "balance": self.group.balance.model_dump(),
            "max_attempts": self.group.max_attempts,
            "timeouts": self.group.timeouts.model_dump(),
            "candidates": [
                {
                    "order": i + 1,
                    "route": g.name,
                    "role": "primary" if i == 0 else "fallback",
                    "strategy": g.strategy,
                    "deployments": [
                        {"id": t.id, "provider": t.provider, "upstream": t.upstream, "weight": t.weight}
                        for t in g.targets
                    ],
                }
                for i, g in enumerate(self.chain)
            ],
        }


_PATTERN_CACHE_SIZE = 4096


@dataclass(frozen=True)
class RoutingPlan:
    providers: Mapping[str, ProviderInfo]
    groups: Mapping[str, Group]  # configured routes and discovered models
    aliases: Mapping[str, str]
    patterns: tuple[CompiledPattern, ...]
    capabilities: Mapping[str, tuple[str, ...]]  # capability -> ordered group names
    version: str  # hash of the source files
    default_timeouts: Timeouts
    default_max_attempts: int
    default_retry_on_status: frozenset[int]
    default_strategy: str
    default_fallbacks: tuple[str, ...] = ()  # end of discovered models' chains (compiled into patterns')
    auth: Auth = field(default_factory=Auth)
    default_balance: Balance = field(default_factory=Balance)
    discovered: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # provider -> models
    redis: RedisSettings | None = None
    cache_store: CacheStore = field(default_factory=CacheStore)
    default_cache: CacheRule = field(default_factory=CacheRule)  # patterns' and discovered models'
    caches: bool = False  # some route caches: the request path looks at the cache stage at all
    _pattern_cache: dict[str, Resolution] = field(default_factory=dict, repr=False, compare=False)
    # resolutions of configured names and aliases (bounded by the config), filled on first use
    _known: dict[str, Resolution] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ resolve

    def resolve(self, name: str) -> Resolution | None:
        """Exact name, alias, discovered model; then ``capability/<x>`` (a reserved prefix), then patterns."""
        known = self._known.get(name)  # exact names and aliases: built once per plan, then looked up
        if known is not None:
            return known
        group = self.groups.get(name)
        if group is not None:
            kind: MatchKind = "discovered" if group.origin == "discovered" else "exact"
            rule = f"model {name!r}" if kind == "exact" else f"discovered on {group.targets[0].provider}"
            res = self._known[name] = Resolution(name, kind, rule, group, self._fallbacks(group))
            return res
        target = self.aliases.get(name)
        if target is not None:
            group = self.groups[target]
            res = self._known[name] = Resolution(
                name, "alias", f"alias {name!r} -> {target!r}", group, self._fallbacks(group)
            )
            return res
        tagged = self._ollama_tag(name)
        if tagged is not None:
            return tagged
        if name.startswith(CAPABILITY_PREFIX):  # reserved: never handed to patterns
            return self._resolve_capability(name)
        cached = self._pattern_cache.get(name)
        if cached is not None:
            return cached
        found = self._resolve_pattern(name)
        if found is not None:  # misses are not cached: random unknown names cannot evict hits
            if len(self._pattern_cache) >= _PATTERN_CACHE_SIZE:
                del self._pattern_cache[next(iter(self._pattern_cache))]  # oldest first
            self._pattern_cache[name] = found
        return found

    def _ollama_tag(self, name: str) -> Resolution | None:
        """Ollama's own rule: ``llama3.2`` is ``llama3.2:latest`` (and back). A name that did not
        resolve matches its other form when that is an exact, alias or discovered name served only
        by Ollama providers."""
        if name.endswith(OLLAMA_DEFAULT_TAG):
            other = name[: -len(OLLAMA_DEFAULT_TAG)]
        elif ":" not in name:
            other = name + OLLAMA_DEFAULT_TAG
        else:
            return None
        if not other or (other not in self.groups and other not in self.aliases):
            return None
        res = self.resolve(other)  # an exact, alias or discovered name: no recursion
        if res is None or not all(
            (p := self.providers.get(t.provider)) is not None and p.type == "ollama"
            for t in res.group.targets
        ):
            return None
        found = self._known[name] = Resolution(
            name,
            res.matched_by,
            f"{res.rule} (Ollama's default tag: {name!r} is {other!r})",
            res.group,
            res.fallbacks,
        )
        return found

    def _fallbacks(self, group: Group) -> tuple[Group, ...]:
        return tuple(self.groups[f] for f in group.fallbacks if f in self.groups)

    def _resolve_pattern(self, name: str) -> Resolution | None:
        for p in self.patterns:
            m = p.regex.fullmatch(name)
            if m is None:
                continue
            upstream = p.upstream_for(m)
            prov = self.providers[p.provider]
            group = Group(
                name=name,
                targets=(Target(f"{p.provider}/{upstream}", p.provider, upstream),),
                strategy=self.default_strategy,
                timeouts=self.default_timeouts,
                max_attempts=self.default_max_attempts,
                retry_on_status=self.default_retry_on_status,
                fallbacks=p.fallbacks,
                capabilities=prov.capabilities.get(upstream, ()),
                origin="pattern",
                balance=self.default_balance,
                cache=RouteCache.compile(self.default_cache, name, {}),
            )
            rule = f"pattern #{p.index + 1} {p.glob!r} -> {p.provider} as {upstream!r}"
            return Resolution(name, "pattern", rule, group, self._fallbacks(group))
        return None

    def _resolve_capability(self, name: str) -> Resolution | None:
        cap = name[len(CAPABILITY_PREFIX) :]
        names = self.capabilities.get(cap, ())
        if not names:
            return None
        chain = [self.groups[n] for n in names]
        # the first route, then every other route with the capability, then their own fallbacks
        seen = {g.name for g in chain}
        for g in list(chain):
            for f in self._fallbacks(g):
                if f.name not in seen:
                    seen.add(f.name)
                    chain.append(f)
        rule = f"capability {cap!r}: {', '.join(names)}"
        return Resolution(name, "capability", rule, chain[0], tuple(chain[1:]))

    # ------------------------------------------------------------------ queries

    def suggestions(self, name: str, n: int = 3) -> list[str]:
        """Configured names closest to a name that did not resolve (for the 404 message)."""
        names = [*self.groups, *self.aliases]
        close = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
        if len(close) < n:
            low = name.lower()
            close += [c for c in names if (low in c.lower() or c.lower() in low) and c not in close]
        return close[:n]

    def public_models(self) -> list[tuple[str, str]]:
        """(model id, owned_by) for `/v1/models`: configured routes, aliases and discovered models."""
        out: list[tuple[str, str]] = []
        for g in self.groups.values():
            owner = g.targets[0].provider if len(g.targets) == 1 else "aib:group"
            out.append((g.name, owner))
        for alias, target in self.aliases.items():
            g = self.groups[target]
            out.append((alias, g.targets[0].provider if len(g.targets) == 1 else "aib:group"))
        return out

    def targets(self) -> dict[str, Target]:
        """Every deployment the plan can route to, by id (patterns excepted)."""
        return {t.id: t for g in self.groups.values() for t in g.targets}

    def with_discovered(self, discovered: Mapping[str, tuple[str, ...]]) -> RoutingPlan:
        """A new plan in which models a provider reported become routable under their own name.

        Configured names win: a discovered model that is already a route or alias is not added.
        """
        groups = {n: g for n, g in self.groups.items() if g.origin != "discovered"}
        for prov_name, models in sorted(discovered.items()):
            prov = self.providers.get(prov_name)
            if prov is None or not prov.discovery or not prov.enabled:
                continue
            for m in models:
                if m in groups or m in self.aliases:
                    continue
                groups[m] = Group(
                    name=m,
                    targets=(Target(f"{prov_name}/{m}", prov_name, m),),
                    strategy=self.default_strategy,
                    timeouts=self.default_timeouts,
                    max_attempts=self.default_max_attempts,
                    retry_on_status=self.default_retry_on_status,
                    fallbacks=self.default_fallbacks,
                    origin="discovered",
                    capabilities=prov.capabilities.get(m, ("chat",)),
                    balance=self.default_balance,
                    cache=RouteCache.compile(self.default_cache, m, {}),
                )
        return replace(
            self,
            groups=MappingProxyType(groups),
            discovered=MappingProxyType(dict(discovered)),
            _pattern_cache={},
            _known={},
        )
