"""Compile validated, checked files into a :class:`RoutingPlan`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from aib.config.check import check_config, glob_regex
from aib.config.errors import ConfigError, ConfigIssue
from aib.config.litellm_sdk import SdkOptions
from aib.config.load import LoadedConfig, load_config, load_from_bytes, resolve_config_dir
from aib.config.plan import (
    DEFAULT_HEALTH_PATHS,
    CompiledPattern,
    Group,
    ModelSettings,
    ProviderInfo,
    RouteCache,
    RoutingPlan,
    Target,
)
from aib.config.schema import (
    Balance,
    CacheRule,
    LiteLLMSdkProvider,
    OpenAICompatibleProvider,
    ProviderBase,
    Route,
    Timeouts,
)


def _sdk_options(name: str, prov: ProviderBase) -> SdkOptions | None:
    if not isinstance(prov, LiteLLMSdkProvider):
        return None
    model = prov.litellm_model
    return SdkOptions(
        provider=name,
        model=model if isinstance(model, str) else MappingProxyType(dict(model)),
        api_base=prov.api_base,
        api_key_env=prov.api_key_env,
        timeout_s=prov.timeout_s,
        drop_params=prov.drop_params,
        params=MappingProxyType(dict(prov.litellm_params)),
        models=tuple(m.name for m in prov.models),
    )


def _wire(ptype: str, prov: ProviderBase) -> tuple[str | None, frozenset[str]]:
    """The outbound adapter of a provider and the front-door APIs it takes as sent."""
    native = getattr(prov, "api", "openai") == "native"
    wire = ptype if native and ptype in ("ollama", "anthropic") else None
    apis = {wire} if wire else set()
    if prov.responses_api if prov.responses_api is not None else ptype == "openai":
        apis.add("responses")
    return wire, frozenset(apis)


def _provider_info(name: str, prov: ProviderBase, config_dir: Path | None = None) -> ProviderInfo:
    ptype: str = prov.type  # type: ignore[attr-defined]
    wire, native_apis = _wire(ptype, prov)
    prefix = prov.api_prefix if isinstance(prov, OpenAICompatibleProvider) else "/v1"
    if wire == "ollama":
        prefix = ""  # /api/chat, /api/generate, /api/embed live at the server's root
    health_path = prov.health.endpoint or DEFAULT_HEALTH_PATHS[ptype]
    return ProviderInfo(
        name=name,
        type=ptype,
        base_url=prov.base_url,
        api_base=prov.base_url + prefix.rstrip("/"),
        health_url=prov.base_url + health_path,
        health=prov.health,
        api_key_env=prov.api_key_env,
        max_connections=prov.max_connections,
        discovery=prov.discovery,
        enabled=prov.enabled,
        models=tuple(m.name for m in prov.models),
        capabilities=MappingProxyType({m.name: m.capabilities for m in prov.models}),
        description=prov.description,
        hardware=prov.hardware,
        sdk=_sdk_options(name, prov),
        wire=wire,
        native_apis=native_apis,
        model_settings=MappingProxyType(
            {
                m.name: ModelSettings(m.context_length, m.keep_alive)
                for m in prov.models
                if m.context_length is not None or m.keep_alive is not None
            }
        ),
        max_tokens=getattr(prov, "max_tokens", 4096),
        proxy=prov.proxy,
        ca_file=_config_path(prov.tls.ca_file, config_dir),
        tls_verify=prov.tls.verify,
        signals=getattr(prov, "signals", None),  # the kinds that report load (ollama, llamacpp, vllm)
    )


def _config_path(path: str | None, config_dir: Path | None) -> str | None:
    """A path from the config: relative ones are read from the config folder."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or config_dir is None else (config_dir / p).resolve())


def _timeouts(base: Timeouts, route: Route) -> Timeouts:
    if route.timeouts is None:
        return base
    patch = {k: v for k, v in route.timeouts.model_dump().items() if v is not None}
    return base.model_copy(update=patch)


def _balance(base: Balance, route: Route) -> Balance:
    if route.balance is None:
        return base
    patch = {k: v for k, v in route.balance.model_dump().items() if v is not None}
    return base.model_copy(update=patch) if patch else base


def _cache(base: CacheRule, route: Route) -> CacheRule:
    if route.cache is None:
        return base
    patch = {k: v for k, v in route.cache.model_dump().items() if v is not None}
    return base.model_copy(update=patch)


def _flatten(
    name: str, direct: dict[str, list[str]], aliases: dict[str, str], tail: tuple[str, ...]
) -> tuple[str, ...]:
    """Depth-first chain of fallbacks (transitive), each route once, the route itself excluded."""
    out: list[str] = []
    seen = {name}

    def visit(n: str) -> None:
        for f in direct.get(n, []):
            f = aliases.get(f, f)
            if f not in seen:
                seen.add(f)
                out.append(f)
                visit(f)

    visit(name)
    for f in tail:
        f = aliases.get(f, f)
        if f not in seen:
            seen.add(f)
            out.append(f)
    return tuple(out)


def compile_plan(cfg: LoadedConfig, *, check: bool = True) -> RoutingPlan:
    """Build the plan. With ``check``, cross-file errors raise :class:`ConfigError` first."""
    if check:
        issues = check_config(cfg)
        errors = [i for i in issues if i.severity == "error"]
        if errors:
            raise ConfigError(errors)
    p, m = cfg.providers, cfg.mappings
    d = m.defaults
    providers = {n: _provider_info(n, prov, cfg.config_dir) for n, prov in p.providers.items()}

    aliases: dict[str, str] = {}
    for name, route in m.models.items():
        for a in route.aliases:
            aliases.setdefault(a, name)
    aliases.update(m.aliases)

    direct: dict[str, list[str]] = {n: list(r.fallbacks) for n, r in m.models.items()}
    for n, chain in m.fallbacks.items():
        direct.setdefault(n, []).extend(chain)

    groups: dict[str, Group] = {}
    for name, route in m.models.items():
        if route.provider:
            targets: tuple[Target, ...] = (_target(route.provider, route.upstream or name, 1.0),)
        else:
            targets = tuple(_target(x.provider, x.upstream or name, x.weight) for x in route.deployments)
        caps: list[str] = []
        for t in targets:
            for c in providers[t.provider].capabilities.get(t.upstream, ("chat",)):
                if c not in caps:
                    caps.append(c)
        groups[name] = Group(
            name=name,
            targets=targets,
            strategy=route.strategy or d.strategy,
            timeouts=_timeouts(d.timeouts, route),
            max_attempts=route.max_attempts or d.retries.max_attempts,
            retry_on_status=frozenset(d.retries.retry_on_status),
            fallbacks=_flatten(name, direct, aliases, m.default_fallbacks),
            params=MappingProxyType(dict(route.params)),
            cache=RouteCache.compile(_cache(d.cache, route), name, route.params),
            critical=route.critical,
            aliases=tuple(a for a, t in aliases.items() if t == name),
            capabilities=tuple(caps),
            description=route.description,
            balance=_balance(d.balance, route),
        )

    patterns = tuple(
        CompiledPattern(
            glob=pat.match,
            regex=glob_regex(pat.match),
            provider=pat.provider,
            upstream=pat.upstream,
            # "" is never a route name: the pattern's own chain, flattened like a route's
            fallbacks=_flatten("", {**direct, "": list(pat.fallbacks)}, aliases, m.default_fallbacks),
            index=i,
        )
        for i, pat in enumerate(m.patterns)
    )

    capabilities: dict[str, tuple[str, ...]] = {}
    every_cap = {c for g in groups.values() for c in g.capabilities} | set(m.capabilities)
    for cap in sorted(every_cap):
        rule = m.capabilities.get(cap)
        order = [aliases.get(x, x) for x in rule.prefer] if rule else []
        if not (rule and rule.only_preferred):
            order += [g.name for g in groups.values() if cap in g.capabilities and g.name not in order]
        order = [x for x in order if x in groups]
        if order:
            capabilities[cap] = tuple(dict.fromkeys(order))

    return RoutingPlan(
        providers=MappingProxyType(providers),
        groups=MappingProxyType(groups),
        aliases=MappingProxyType(aliases),
        patterns=patterns,
        capabilities=MappingProxyType(capabilities),
        version=cfg.sources_hash,
        default_timeouts=d.timeouts,
        default_max_attempts=d.retries.max_attempts,
        default_retry_on_status=frozenset(d.retries.retry_on_status),
        default_strategy=d.strategy,
        default_fallbacks=tuple(dict.fromkeys(aliases.get(f, f) for f in m.default_fallbacks)),
        auth=m.auth,
        default_balance=d.balance,
        redis=m.redis,
        cache_store=m.cache,
        default_cache=d.cache,
        # patterns and discovered models take defaults.cache
        caches=d.cache.enabled or any(g.cache is not None for g in groups.values()),
    )


def _target(provider: str, upstream: str, weight: float) -> Target:
    return Target(f"{provider}/{upstream}", provider, upstream, weight)


def build_plan(
    config_dir: str | Path | None = None, content: tuple[bytes, bytes, tuple[str, str]] | None = None
) -> tuple[RoutingPlan, LoadedConfig, list[ConfigIssue]]:
    """Load, check and compile in one call. Returns the plan, the loaded files and the warnings.

    ``content``: both files' bytes and display names, already read (a worker that follows another's
    configuration); ``config_dir`` is then only where they belong."""
    if content is None:
        cfg = load_config(config_dir)
    else:
        cfg = replace(load_from_bytes(*content), config_dir=resolve_config_dir(config_dir))
    issues = check_config(cfg)
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        raise ConfigError(errors)
    return compile_plan(cfg, check=False), cfg, [i for i in issues if i.severity == "warning"]
