"""Cross-file checks: what each file cannot know about the other.

Each finding is a :class:`ConfigIssue` pointing at the line that causes it. Errors stop a load or a
reload; warnings are reported and the config is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from aib.config.errors import ConfigIssue, Severity
from aib.config.litellm_sdk import AdapterPython, find_adapter_python
from aib.config.load import LoadedConfig
from aib.config.partial import LeftOut
from aib.config.schema import (
    CAPABILITY_PREFIX,
    Deployment,
    LlamaCppProvider,
    MappingsFile,
    ProviderBase,
    ProvidersFile,
)


def glob_regex(glob: str) -> re.Pattern[str]:
    """A glob (``*`` any run, ``?`` one character) as an anchored regex with one group per wildcard."""
    out = []
    for ch in glob:
        out.append("(.*)" if ch == "*" else "(.)" if ch == "?" else re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def glob_shadows(earlier: str, later: str) -> bool:
    """True when every name ``later`` matches is matched by ``earlier`` (so ``later`` never fires).

    Read ``later`` as a word over the alphabet plus the symbols ``*`` and ``?``: ``earlier`` covers it
    exactly when its ``*`` may absorb anything (wildcards included), its ``?`` any one symbol but ``*``,
    and its literals only themselves.
    """
    rx = "".join(".*" if ch == "*" else "[^*]" if ch == "?" else re.escape(ch) for ch in earlier)
    return re.fullmatch(rx, later, re.DOTALL) is not None


class _Checker:
    def __init__(self, cfg: LoadedConfig, left: LeftOut | None = None) -> None:
        self.cfg = cfg
        self.p: ProvidersFile = cfg.providers
        self.m: MappingsFile = cfg.mappings
        self.issues: list[ConfigIssue] = []
        self._adapter: AdapterPython | None = None
        # entries left out for a schema error (aib.config.partial): known names, but not checked
        self.left = left or LeftOut()

    def add(self, file: str, loc: tuple[str | int, ...], msg: str, severity: Severity = "error") -> None:
        doc = self.cfg.providers_doc if file == "p" else self.cfg.mappings_doc
        line, path = doc.line_of(self.left.file_loc(loc) if file == "m" else loc)
        self.issues.append(ConfigIssue(doc.name, line, path, msg, severity))

    # names --------------------------------------------------------------------------------
    def route_names(self) -> set[str]:
        return set(self.m.models) | set(self.alias_map()) | self.left.routes

    def alias_map(self) -> dict[str, str]:
        out = dict(self.m.aliases)
        for name, route in self.m.models.items():
            for a in route.aliases:
                out.setdefault(a, name)
        return out

    def deployments(self) -> Iterator[tuple[tuple[str | int, ...], Deployment]]:
        for name, route in self.m.models.items():
            if route.provider:
                yield (
                    ("models", name, "provider"),
                    Deployment(provider=route.provider, upstream=route.upstream),
                )
            for i, d in enumerate(route.deployments):
                yield ("models", name, "deployments", i, "provider"), d

    # checks -------------------------------------------------------------------------------
    def run(self) -> list[ConfigIssue]:
        self.check_providers()
        self.check_references()
        self.check_aliases()
        self.check_fallbacks()
        self.check_patterns()
        self.check_capabilities()
        self.check_groups()
        self.check_redis()
        return self.issues

    def check_providers(self) -> None:
        seen: dict[tuple[str, int], tuple[str, str]] = {}  # address -> (provider, type)
        for name, prov in self.p.providers.items():
            hp = prov.host_port
            if prov.type in ("openai", "anthropic"):
                pass  # one cloud API, several keys or organisations: a legitimate setup
            elif hp in seen and not (prov.type == seen[hp][1] == "litellm_sdk"):  # those share one adapter
                self.add(
                    "p",
                    ("providers", name, "base_url"),
                    f"{hp[0]}:{hp[1]} is also used by provider {seen[hp][0]!r}; two providers cannot share "
                    "one server (list both models under one provider)",
                )
            else:
                seen.setdefault(hp, (name, prov.type))
            if prov.type == "litellm_sdk" and prov.enabled:
                self.check_sdk_adapter(name)
            if prov.api_key_env and not os.environ.get(prov.api_key_env):
                self.add(
                    "p",
                    ("providers", name, "api_key_env"),
                    f"environment variable {prov.api_key_env} is not set; requests to {name!r} will fail "
                    "authentication",
                    "warning",
                )
            self.check_tls(name, prov)
            names = [m.name for m in prov.models]
            for i, mname in enumerate(names):
                if mname in names[:i]:
                    self.add("p", ("providers", name, "models", i), f"model {mname!r} is listed twice")
            self.check_signals(name, prov)

    def check_signals(self, name: str, prov: LlamaCppProvider | object) -> None:
        if isinstance(prov, LlamaCppProvider) and prov.signals.enabled and prov.signals.interval_s < 1.5:
            sig = prov.signals
            self.add(
                "p",
                ("providers", name, "signals", "interval_s"),
                f"polling llama-server every {sig.interval_s:g}s keeps it from noticing clients that hung up "
                "on unstreamed requests (each answer restarts its 1 s disconnect check); use 1.5 s or more",
                "warning",
            )

    def check_tls(self, name: str, prov: ProviderBase) -> None:
        ca = prov.tls.ca_file
        if ca is not None:
            path = Path(ca).expanduser()
            if not path.is_absolute() and self.cfg.config_dir is not None:
                path = self.cfg.config_dir / path
            if not path.is_file():
                self.add("p", ("providers", name, "tls", "ca_file"), f"no such file: {path}")
        if not prov.tls.verify and prov.base_url.startswith("https:"):
            self.add(
                "p",
                ("providers", name, "tls", "verify"),
                f"certificates of {name!r} are not checked: anyone on the path can read its traffic and key",
                "warning",
            )

    def check_sdk_adapter(self, name: str) -> None:
        if self._adapter is None:
            self._adapter = find_adapter_python()
        if self._adapter.problem:
            self.add("p", ("providers", name, "type"), self._adapter.problem, "warning")

    def check_references(self) -> None:
        provs = self.p.providers
        for loc, d in self.deployments():
            route_name = str(loc[1])
            prov = provs.get(d.provider)
            if prov is None and d.provider in self.left.providers:
                continue
            if prov is None:
                self.add("m", loc, f"unknown provider {d.provider!r} (known: {', '.join(sorted(provs))})")
                continue
            upstream = d.upstream or route_name
            sdk_model = getattr(prov, "litellm_model", None)
            if isinstance(sdk_model, dict) and upstream not in sdk_model:
                self.add(
                    "m",
                    (*loc[:-1], "upstream") if d.upstream else loc,
                    f"provider {d.provider!r} maps no LiteLLM model for {upstream!r} (litellm_model has: "
                    f"{', '.join(sdk_model)})",
                )
                continue
            served = [m.name for m in prov.models]
            if served and upstream not in served and not prov.discovery:
                self.add(
                    "m",
                    (*loc[:-1], "upstream") if d.upstream else loc,
                    f"provider {d.provider!r} does not serve model {upstream!r} (it serves: "
                    f"{', '.join(served)}); add it to providers.yaml or turn on discovery",
                )
            if not prov.enabled:
                self.add("m", loc, f"provider {d.provider!r} is disabled", "warning")
        for i, pat in enumerate(self.m.patterns):
            if pat.provider not in provs and pat.provider not in self.left.providers:
                self.add(
                    "m",
                    ("patterns", i, "provider"),
                    f"unknown provider {pat.provider!r} (known: {', '.join(sorted(provs))})",
                )
        for name in self.m.models:
            if name.startswith(CAPABILITY_PREFIX):
                self.add("m", ("models", name), f"names starting with {CAPABILITY_PREFIX!r} are reserved")

    def check_aliases(self) -> None:
        claimed: dict[str, str] = {}
        reserved = f"names starting with {CAPABILITY_PREFIX!r} are reserved"
        for name, route in self.m.models.items():
            for i, a in enumerate(route.aliases):
                if a.startswith(CAPABILITY_PREFIX):
                    self.add("m", ("models", name, "aliases", i), reserved)
                if a in self.m.models:
                    self.add("m", ("models", name, "aliases", i), f"alias {a!r} is also a model name")
                elif a in claimed:
                    self.add(
                        "m", ("models", name, "aliases", i), f"alias {a!r} is also an alias of {claimed[a]!r}"
                    )
                claimed[a] = name
        for a, target in self.m.aliases.items():
            if a.startswith(CAPABILITY_PREFIX):
                self.add("m", ("aliases", a), reserved)
            if a in self.m.models:
                self.add("m", ("aliases", a), f"alias {a!r} is also a model name")
            elif a in claimed and claimed[a] != target:
                self.add("m", ("aliases", a), f"alias {a!r} is also an alias of {claimed[a]!r}")
            if target not in self.m.models and target not in self.left.routes:
                self.add("m", ("aliases", a), f"alias points to unknown model {target!r}{self._hint(target)}")

    def _hint(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, list(self.m.models), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def fallback_edges(self) -> dict[str, list[tuple[tuple[str | int, ...], str]]]:
        edges: dict[str, list[tuple[tuple[str | int, ...], str]]] = {}
        for name, route in self.m.models.items():
            for i, f in enumerate(route.fallbacks):
                edges.setdefault(name, []).append((("models", name, "fallbacks", i), f))
        for name, chain in self.m.fallbacks.items():
            for i, f in enumerate(chain):
                edges.setdefault(name, []).append((("fallbacks", name, i), f))
        return edges

    def check_fallbacks(self) -> None:
        known = self.route_names()
        aliases = self.alias_map()
        edges = self.fallback_edges()
        for src, outs in edges.items():
            if src not in self.m.models and src not in self.left.routes:
                self.add("m", outs[0][0][:2], f"fallbacks for unknown model {src!r}{self._hint(src)}")
            for loc, dst in outs:
                if dst not in known:
                    self.add("m", loc, f"fallback to unknown model {dst!r}{self._hint(dst)}")
                elif aliases.get(dst, dst) == src:
                    self.add("m", loc, f"{src!r} falls back to itself")
        for i, f in enumerate(self.m.default_fallbacks):
            if f not in known:
                self.add("m", ("default_fallbacks", i), f"fallback to unknown model {f!r}{self._hint(f)}")
        # cycles: A -> B -> ... -> A (through canonical route names)
        graph = {
            s: [aliases.get(d, d) for _, d in outs if aliases.get(d, d) != s] for s, outs in edges.items()
        }
        reported: set[frozenset[str]] = set()
        for start in graph:
            stack: list[tuple[str, list[str]]] = [(start, [start])]
            while stack:
                node, path = stack.pop()
                for nxt in graph.get(node, []):
                    if nxt == start:
                        key = frozenset(path)
                        if key not in reported:
                            reported.add(key)
                            loc = (
                                next(loc for loc, d in edges[start] if aliases.get(d, d) == path[1])
                                if len(path) > 1
                                else edges[start][0][0]
                            )
                            cycle = " -> ".join([*path, start])
                            self.add("m", loc, f"fallback cycle: {cycle}")
                    elif nxt not in path:
                        stack.append((nxt, [*path, nxt]))

    def check_patterns(self) -> None:
        pats = self.m.patterns
        for j, later in enumerate(pats):
            if later.match.startswith(CAPABILITY_PREFIX):
                self.add(
                    "m",
                    ("patterns", j, "match"),
                    f"names starting with {CAPABILITY_PREFIX!r} are reserved for capability requests "
                    "and never reach patterns; use `capabilities:` rules instead",
                )
            for i in range(j):
                if glob_shadows(pats[i].match, later.match):
                    self.add(
                        "m",
                        ("patterns", j, "match"),
                        f"pattern {later.match!r} never matches: the earlier pattern #{i + 1} "
                        f"{pats[i].match!r} takes every name it would (move it up or remove it)",
                    )
                    break
            for k, f in enumerate(later.fallbacks):
                if f not in self.route_names():
                    self.add("m", ("patterns", j, "fallbacks", k), f"fallback to unknown model {f!r}")

    def route_capabilities(self) -> dict[str, set[str]]:
        caps: dict[str, set[str]] = {}
        for loc, d in self.deployments():
            name = str(loc[1])
            prov = self.p.providers.get(d.provider)
            if prov is None:
                continue
            upstream = d.upstream or name
            spec = next((m for m in prov.models if m.name == upstream), None)
            caps.setdefault(name, set()).update(spec.capabilities if spec else ("chat",))
        return caps

    def check_capabilities(self) -> None:
        have = self.route_capabilities()
        every = set().union(*have.values()) if have else set()
        for cap, rule in self.m.capabilities.items():
            if cap not in every and not self.left.any:  # (an entry left out may have had it)
                self.add(
                    "m",
                    ("capabilities", cap),
                    f"no model has capability {cap!r} (declare it under a provider's models[].capabilities)",
                )
            for i, r in enumerate(rule.prefer):
                canonical = self.alias_map().get(r, r)
                if canonical in self.left.routes:
                    continue
                if canonical not in self.m.models:
                    self.add("m", ("capabilities", cap, "prefer", i), f"unknown model {r!r}{self._hint(r)}")
                elif cap not in have.get(canonical, set()):
                    self.add(
                        "m",
                        ("capabilities", cap, "prefer", i),
                        f"model {r!r} does not have capability {cap!r}",
                        "warning",
                    )

    def check_groups(self) -> None:
        default = self.m.defaults.strategy
        for name, route in self.m.models.items():
            strategy = route.strategy or default
            if (
                route.deployments
                and strategy == "weighted"
                and not any(d.weight > 0 for d in route.deployments)
            ):
                self.add(
                    "m",
                    ("models", name, "deployments"),
                    "weighted group has no deployment with a positive weight",
                )
            ids = [(d.provider, d.upstream or name) for d in route.deployments]
            for i, ident in enumerate(ids):
                if ident in ids[:i]:
                    self.add(
                        "m",
                        ("models", name, "deployments", i),
                        f"deployment {ident[0]}/{ident[1]} is listed twice",
                    )

    def check_redis(self) -> None:
        m = self.m
        users = []
        if m.auth.store == "redis":
            users.append((("auth", "store"), "auth.store: redis"))
        if m.cache.backend == "redis":
            users.append((("cache", "backend"), "cache.backend: redis"))
        if m.redis is None:
            for loc, what in users:
                self.add("m", loc, f"{what} needs a `redis:` section (at least `url: redis://HOST:6379/0`)")
            return
        env = m.redis.password_env
        if env and not os.environ.get(env):
            self.add(
                "m",
                ("redis", "password_env"),
                f"${env} is not set: the gateway connects to Redis without a password",
                "warning",
            )
        if not users:
            self.add(
                "m",
                ("redis",),
                "the `redis:` section is not used: set `auth.store: redis` and/or `cache.backend: redis`",
                "warning",
            )


def check_config(cfg: LoadedConfig, left: LeftOut | None = None) -> list[ConfigIssue]:
    """Every cross-file problem of a loaded config, errors and warnings. ``left``: entries left out
    of it because they failed the schema (:mod:`aib.config.partial`)."""
    return _Checker(cfg, left).run()
