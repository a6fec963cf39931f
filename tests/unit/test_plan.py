"""The RoutingPlan: resolution order, patterns, fallback chains, discovery; plus property tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aib.config.check import check_config, glob_regex, glob_shadows
from aib.config.compile import build_plan, compile_plan
from aib.config.load import load_from_bytes
from aib.config.plan import _PATTERN_CACHE_SIZE, RoutingPlan
from config_support import write_files

pytestmark = pytest.mark.unit

PROVIDERS = """\
version: 1
providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:11434
    discovery: true
    models:
      - name: llama3
        capabilities: [chat, tools]
      - name: coder
        capabilities: [chat, code]
      - name: embed
        capabilities: [embeddings]
  vllm:
    type: vllm
    base_url: http://127.0.0.1:8001
    models: [big]
  lcpp:
    type: llamacpp
    base_url: http://127.0.0.1:8000
    models: [small]
  compat:
    type: openai_compatible
    base_url: http://127.0.0.1:9000
    api_prefix: /api/v2/
    health: {endpoint: /ping}
"""
MAPPINGS = """\
defaults:
  strategy: least_outstanding
  timeouts: {connect_s: 1, first_byte_s: 30, total_s: 100}
  retries: {max_attempts: 4}
models:
  llama3:
    provider: ollama
    aliases: [fast]
    fallbacks: [big]
  coder:
    provider: ollama
    fallbacks: [llama3, small]
    timeouts: {first_byte_s: 5}
    max_attempts: 2
    params: {max_tokens: 64}
  embed:
    provider: ollama
  big:
    provider: vllm
    fallbacks: [small]
  small:
    provider: lcpp
  pool:
    strategy: weighted
    deployments:
      - {provider: vllm, upstream: big, weight: 3}
      - {provider: lcpp, upstream: small, weight: 1}
aliases:
  default: llama3
fallbacks:
  big: [embed]
default_fallbacks: [small]
patterns:
  - match: "o/*"
    provider: ollama
  - match: "v/*/*"
    provider: vllm
    upstream: "{1}--{2}"
    fallbacks: [fast]
  - match: "whole-?"
    provider: vllm
    upstream: "served-{0}"
capabilities:
  code:
    prefer: [coder]
  chat:
    prefer: [big]
    only_preferred: true
"""


@pytest.fixture
def plan(tmp_path: Path) -> RoutingPlan:
    built, _cfg, warnings = build_plan(write_files(tmp_path, PROVIDERS, MAPPINGS))
    assert warnings == []
    return built


def chain(plan: RoutingPlan, name: str) -> list[str]:
    res = plan.resolve(name)
    assert res is not None, name
    return [g.name for g in res.chain]


# --------------------------------------------------------------------------- resolution


def test_exact_name(plan: RoutingPlan) -> None:
    res = plan.resolve("coder")
    assert res is not None
    assert (res.matched_by, res.rule, res.group.name) == ("exact", "model 'coder'", "coder")
    g = res.group
    assert g.strategy == "least_outstanding"
    assert g.max_attempts == 2
    assert (g.timeouts.connect_s, g.timeouts.first_byte_s, g.timeouts.total_s) == (1, 5, 100)
    assert dict(g.params) == {"max_tokens": 64}
    assert g.capabilities == ("chat", "code")
    assert plan.groups["embed"].max_attempts == 4


def test_alias(plan: RoutingPlan) -> None:
    for alias in ("fast", "default"):
        res = plan.resolve(alias)
        assert res is not None
        assert (res.matched_by, res.group.name) == ("alias", "llama3")
        assert res.rule == f"alias {alias!r} -> 'llama3'"
    assert set(plan.groups["llama3"].aliases) == {"fast", "default"}


def test_resolution_order(plan: RoutingPlan) -> None:
    # names below are claimed by several rules; the first rule in the documented order wins
    live = plan.with_discovered({"ollama": ("llama3", "fast", "mistral", "o/x", "whole-1")})
    kinds = {n: live.resolve(n).matched_by for n in ("llama3", "fast", "mistral", "o/x", "whole-1", "o/y")}  # type: ignore[union-attr]
    assert kinds == {
        "llama3": "exact",  # also discovered
        "fast": "alias",  # also discovered
        "mistral": "discovered",
        "o/x": "discovered",  # also pattern o/*
        "whole-1": "discovered",  # also pattern whole-?
        "o/y": "pattern",
    }
    assert live.resolve("mistral").rule == "discovered on ollama"  # type: ignore[union-attr]
    # capability/ is reserved: a catch-all pattern never takes it, an unknown capability is a miss
    assert plan.resolve("capability/vision") is None
    assert plan.resolve("capability/code").matched_by == "capability"  # type: ignore[union-attr]


def test_unknown_names(plan: RoutingPlan) -> None:
    assert plan.resolve("nothing") is None
    assert plan.resolve("capability/telepathy") is None
    assert plan.resolve("o/") is not None  # `*` may match nothing
    assert plan.resolve("whole-12") is None  # `?` is exactly one character


def test_pattern_upstream_templates(plan: RoutingPlan) -> None:
    res = plan.resolve("o/mistral:7b")
    assert res is not None
    assert res.matched_by == "pattern"
    assert res.rule == "pattern #1 'o/*' -> ollama as 'mistral:7b'"
    assert [(t.provider, t.upstream, t.id) for t in res.group.targets] == [
        ("ollama", "mistral:7b", "ollama/mistral:7b")
    ]
    assert res.group.origin == "pattern"
    assert res.group.strategy == "least_outstanding"
    assert plan.resolve("v/meta/llama").group.targets[0].upstream == "meta--llama"  # type: ignore[union-attr]
    assert plan.resolve("whole-x").group.targets[0].upstream == "served-whole-x"  # type: ignore[union-attr]
    assert plan.resolve("o/llama3").group.capabilities == ("chat", "tools")  # type: ignore[union-attr]


def test_pattern_results_are_cached_and_the_cache_is_bounded(plan: RoutingPlan) -> None:
    first = plan.resolve("o/a")
    assert plan.resolve("o/a") is first
    assert plan.resolve("nope") is None and plan.resolve("nope") is None
    for i in range(_PATTERN_CACHE_SIZE + 10):
        plan.resolve(f"o/m{i}")
    assert 0 < len(plan._pattern_cache) <= _PATTERN_CACHE_SIZE
    assert plan.resolve("o/m5").group.targets[0].upstream == "m5"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- fallbacks


def test_fallbacks_flattened_transitively_without_duplicates(plan: RoutingPlan) -> None:
    # coder -> (llama3 -> big -> (small, embed), small); default_fallbacks (small) already in
    assert chain(plan, "coder") == ["coder", "llama3", "big", "small", "embed"]
    assert chain(plan, "llama3") == ["llama3", "big", "small", "embed"]
    assert chain(plan, "big") == ["big", "small", "embed"]  # a route's own list, then the top-level one
    # default_fallbacks appended; never to itself
    assert chain(plan, "embed") == ["embed", "small"]
    assert chain(plan, "small") == ["small"]
    assert plan.groups["pool"].fallbacks == ("small",)


def test_pattern_fallbacks_flattened_and_default_appended(plan: RoutingPlan) -> None:
    assert chain(plan, "v/a/b") == ["v/a/b", "llama3", "big", "small", "embed"]
    assert chain(plan, "o/x") == ["o/x", "small"]


def test_capability_requests(plan: RoutingPlan) -> None:
    res = plan.resolve("capability/code")
    assert res is not None
    assert res.rule == "capability 'code': coder"
    assert [g.name for g in res.chain] == ["coder", "llama3", "big", "small", "embed"]
    assert chain(plan, "capability/chat")[0] == "big"  # only_preferred: no other chat routes first
    assert chain(plan, "capability/tools") == ["llama3", "big", "small", "embed"]
    assert chain(plan, "capability/embeddings") == ["embed", "small"]


def test_explain(plan: RoutingPlan) -> None:
    out = plan.resolve("fast").explain()  # type: ignore[union-attr]
    assert out["requested"] == "fast"
    assert out["route"] == "llama3"
    assert out["matched_by"] == "alias"
    assert out["max_attempts"] == 4
    assert out["timeouts"] == {"connect_s": 1.0, "first_byte_s": 30.0, "total_s": 100.0}
    cands = out["candidates"]
    assert [(c["order"], c["route"], c["role"]) for c in cands] == [  # type: ignore[index,union-attr]
        (1, "llama3", "primary"),
        (2, "big", "fallback"),
        (3, "small", "fallback"),
        (4, "embed", "fallback"),
    ]
    pool = plan.resolve("pool").explain()["candidates"][0]  # type: ignore[union-attr,index]
    assert pool["strategy"] == "weighted"
    assert pool["deployments"] == [
        {"id": "vllm/big", "provider": "vllm", "upstream": "big", "weight": 3.0},
        {"id": "lcpp/small", "provider": "lcpp", "upstream": "small", "weight": 1.0},
    ]


# --------------------------------------------------------------------------- discovery


def test_with_discovered(plan: RoutingPlan) -> None:
    live = plan.with_discovered(
        {
            "ollama": ("mistral", "llama3", "default", "qwen"),
            "vllm": ("other",),  # no discovery on vllm: ignored
            "gone": ("ghost",),  # not a provider: ignored
        }
    )
    assert plan.resolve("mistral") is None  # the old plan is unchanged
    assert "mistral" not in plan.groups
    res = live.resolve("mistral")
    assert res is not None
    assert res.group.origin == "discovered"
    assert [(t.provider, t.upstream) for t in res.group.targets] == [("ollama", "mistral")]
    assert res.group.capabilities == ("chat",)
    assert [g.name for g in res.chain] == ["mistral", "small"]  # default_fallbacks apply
    assert live.groups["llama3"] is plan.groups["llama3"]  # configured names win
    assert live.resolve("default").matched_by == "alias"  # type: ignore[union-attr]
    assert live.resolve("other") is None and live.resolve("ghost") is None
    assert dict(live.discovered)["ollama"][0] == "mistral"
    # a newer report replaces the older one
    later = live.with_discovered({"ollama": ("qwen",)})
    assert "mistral" not in later.groups and "qwen" in later.groups


def test_with_discovered_ignores_disabled_provider(tmp_path: Path) -> None:
    disabled = PROVIDERS.replace("    discovery: true\n", "    discovery: true\n    enabled: false\n")
    built, _, _ = build_plan(write_files(tmp_path, disabled, "models:\n  big:\n    provider: vllm\n"))
    assert "mistral" not in built.with_discovered({"ollama": ("mistral",)}).groups


# --------------------------------------------------------------------------- queries


def test_suggestions(plan: RoutingPlan) -> None:
    assert plan.suggestions("llama")[0] == "llama3"
    assert plan.suggestions("codr")[0] == "coder"
    assert "big" in plan.suggestions("big-model-v2")  # substring match when nothing is close
    assert plan.suggestions("zzzzzzzzzzzz") == []
    assert len(plan.suggestions("l", n=2)) <= 2


def test_public_models(plan: RoutingPlan) -> None:
    models = dict(plan.public_models())
    assert models == {
        "llama3": "ollama",
        "coder": "ollama",
        "embed": "ollama",
        "big": "vllm",
        "small": "lcpp",
        "pool": "aib:group",
        "fast": "ollama",
        "default": "ollama",
    }
    assert "mistral" in dict(plan.with_discovered({"ollama": ("mistral",)}).public_models())


def test_providers_and_targets(plan: RoutingPlan) -> None:
    compat = plan.providers["compat"]
    assert compat.api_base == "http://127.0.0.1:9000/api/v2"
    assert compat.health_url == "http://127.0.0.1:9000/ping"
    ollama = plan.providers["ollama"]
    assert ollama.api_base == "http://127.0.0.1:11434"  # native API (/api/chat) at the root
    assert (ollama.wire, ollama.native_apis) == ("ollama", frozenset({"ollama"}))
    assert ollama.health_url == "http://127.0.0.1:11434/api/tags"
    assert ollama.discovery and ollama.models == ("llama3", "coder", "embed")
    assert set(plan.targets()) == {"ollama/llama3", "ollama/coder", "ollama/embed", "vllm/big", "lcpp/small"}


# --------------------------------------------------------------------------- properties

GLOB_CHARS = "ab/*?"
FILL_CHARS = "ab/*?x"
globs = st.text(alphabet=GLOB_CHARS, max_size=7)


def instance(data: st.DataObject, glob: str) -> str:
    """A string the glob matches: each `*` becomes any run, each `?` any one character."""
    out = []
    for ch in glob:
        if ch == "*":
            out.append(data.draw(st.text(alphabet=FILL_CHARS, max_size=4)))
        elif ch == "?":
            out.append(data.draw(st.sampled_from(FILL_CHARS)))
        else:
            out.append(ch)
    return "".join(out)


def specialize(data: st.DataObject, glob: str) -> str:
    """A glob that matches a subset of what ``glob`` matches: wildcards narrowed, never widened."""
    out = []
    for ch in glob:
        if ch == "*":
            out.append(data.draw(st.text(alphabet=GLOB_CHARS, max_size=3)))
        elif ch == "?":
            out.append(data.draw(st.sampled_from("ab/?")))
        else:
            out.append(ch)
    return "".join(out)


PROPS = settings(database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(glob=globs, data=st.data())
def test_glob_matches_what_it_generates(glob: str, data: st.DataObject) -> None:
    name = instance(data, glob)
    m = glob_regex(glob).fullmatch(name)
    assert m is not None
    assert len(m.groups()) == glob.count("*") + glob.count("?")


@PROPS
@given(earlier=globs, later=globs, data=st.data())
def test_glob_shadows_is_sound(earlier: str, later: str, data: st.DataObject) -> None:
    if glob_shadows(earlier, later):
        for _ in range(5):
            assert glob_regex(earlier).fullmatch(instance(data, later)) is not None


@PROPS
@given(glob=globs, data=st.data())
def test_glob_shadows_its_specializations(glob: str, data: st.DataObject) -> None:
    narrower = specialize(data, glob)
    assert glob_shadows(glob, narrower)
    assert glob_regex(glob).fullmatch(instance(data, narrower)) is not None


names = st.from_regex(r"[a-z][a-z0-9.:-]{0,6}", fullmatch=True)


@st.composite
def configs(draw: st.DrawFn) -> tuple[bytes, bytes, list[str], dict[str, str]]:
    """Small valid config pairs (as JSON, which is YAML): providers, routes, aliases, fallbacks, patterns."""
    prov_names = draw(
        st.lists(st.from_regex(r"p[a-z0-9_]{0,4}", fullmatch=True), min_size=1, max_size=3, unique=True)
    )
    providers: dict[str, dict[str, object]] = {}
    served: dict[str, list[str]] = {}
    for i, pn in enumerate(prov_names):
        served[pn] = draw(st.lists(names, min_size=1, max_size=3, unique=True))
        providers[pn] = {
            "type": draw(st.sampled_from(["ollama", "llamacpp", "vllm", "openai_compatible"])),
            "base_url": f"http://127.0.0.1:{9000 + i}",
            "discovery": draw(st.booleans()),
            "models": [
                {
                    "name": n,
                    "capabilities": draw(
                        st.lists(st.sampled_from(["chat", "code"]), min_size=1, unique=True)
                    ),
                }
                for n in served[pn]
            ],
        }
    route_names = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    routes: dict[str, dict[str, object]] = {}
    for rn in route_names:
        picks = draw(st.lists(st.sampled_from(prov_names), min_size=1, max_size=3))
        deps = [
            {
                "provider": pn,
                "upstream": draw(st.sampled_from(served[pn])),
                "weight": draw(st.sampled_from([0, 1, 2.5])),
            }
            for pn in picks
        ]
        route: dict[str, object]
        if len(deps) == 1:
            route = {"provider": deps[0]["provider"], "upstream": deps[0]["upstream"]}
        else:
            route = {
                "deployments": deps,
                "strategy": draw(st.sampled_from(["round_robin", "least_outstanding"])),
            }
        route["fallbacks"] = draw(st.lists(st.sampled_from(route_names), max_size=3))
        routes[rn] = route
    alias_names = draw(st.lists(names.filter(lambda n: n not in routes), max_size=4, unique=True))
    aliases = {a: draw(st.sampled_from(route_names)) for a in alias_names}
    mappings = {
        "models": routes,
        "aliases": aliases,
        "fallbacks": {
            rn: draw(st.lists(st.sampled_from([*route_names, *alias_names]), max_size=2))
            for rn in draw(st.lists(st.sampled_from(route_names), max_size=2, unique=True))
        },
        "default_fallbacks": draw(st.lists(st.sampled_from(route_names), max_size=2)),
        "patterns": [{"match": f"{pn}/*", "provider": pn} for pn in prov_names],
        "capabilities": {"chat": {"prefer": draw(st.lists(st.sampled_from(route_names), max_size=2))}},
    }
    return json.dumps({"providers": providers}).encode(), json.dumps(mappings).encode(), route_names, aliases


@settings(database=None, deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_compile_never_crashes_and_routes_resolve_to_themselves(
    cfg: tuple[bytes, bytes, list[str], dict[str, str]],
) -> None:
    providers_raw, mappings_raw, route_names, aliases = cfg
    loaded = load_from_bytes(providers_raw, mappings_raw)
    check_config(loaded)  # may find cycles or weightless groups; must not crash
    plan = compile_plan(loaded, check=False)
    for name in route_names:
        res = plan.resolve(name)
        assert res is not None
        assert (res.matched_by, res.group.name) == ("exact", name)
        names_in_chain = [g.name for g in res.chain]
        assert len(names_in_chain) == len(set(names_in_chain))
    for alias, target in aliases.items():
        assert plan.resolve(alias).group.name == target  # type: ignore[union-attr]
    for pn in plan.providers:
        assert plan.resolve(f"{pn}/anything").group.targets[0].upstream == "anything"  # type: ignore[union-attr]
