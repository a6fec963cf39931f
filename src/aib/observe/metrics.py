"""Prometheus metrics: one observer per gateway, with its own registry (no global state).

Per finished request :meth:`MetricsObserver.request_done` does a few dict lookups and adds to plain
lists keyed by label tuples (no locks, no metric objects); the families are built at scrape time. Live state (in-flight requests, provider health,
breakers, the config version, request-log drops) is read when Prometheus scrapes, by a collector.

Labels only ever take configured names, so the number of series is bounded by the config: a route
that is not a configured one is labelled by how it matched (``pattern:ollama/*``, ``capability:code``,
``unknown``), status is the HTTP code sent to the client (``499`` when the client left first).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from aib.limits import LIMIT_CODES
from aib.observe.records import Attempt, RequestRecord
from aib.observe.signal_metrics import signal_families
from aib.observe.wire import CACHE, CACHE_LOOKUP_S, Wire, to_wire

# LLM requests last from milliseconds (embeddings, errors) to minutes (long generations)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
# the gateway's own added time: tens of microseconds to a few milliseconds
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip
# a cache lookup: microseconds in memory, a Redis round trip (up to its timeout)
CACHE_LOOKUP_BUCKETS = (
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
RELOAD_RESULTS = ("success", "failure")
ATTEMPT_OUTCOMES = (
    "ok", "rejected", "cancelled", "timeout", "connect_error", "rate_limited", "http_error", "bad_response",
)  # fmt: skip
CAPABILITY_PREFIX = "capability/"
_ROUTE_CACHE_MAX = 4096


class GatewayLike(Protocol):
    """What metrics read from the gateway (duck-typed: ``aib.observe`` never imports the gateway)."""

    plan: Any
    state: Any
    inflight: int


def status_label(record: RequestRecord) -> str:
    if record.status:
        return str(record.status)
    return "499" if record.client_disconnected else "0"


def attempt_outcome(a: Attempt) -> str:
    """A bounded name for how one upstream attempt ended."""
    return outcome(a.ok, a.status, a.error)


def outcome(ok: bool, status: int | None, error: str | None) -> str:
    if ok:
        return "rejected" if status is not None and status >= 400 else "ok"
    err = error or ""
    if err == "client disconnected":
        return "cancelled"
    if "within the time limit" in err or "read timeout" in err:
        return "timeout"
    if status is None:
        return "connect_error"
    if status == 429:
        return "rate_limited"
    if status >= 400:
        return "http_error"
    return "bad_response"


def route_label(record: RequestRecord, groups: Mapping[str, Any], patterns: Any) -> str:
    """The route as a configured name, or the kind of rule that matched (bounded by the config)."""
    return label(record.route, record.matched_by, record.rule, record.model, groups, patterns)


def label(
    route: str | None, how: str | None, rule: str | None, model: str, groups: Mapping[str, Any], patterns: Any
) -> str:
    if route is None:
        return "unknown"
    if how == "capability":
        return "capability:" + (
            model[len(CAPABILITY_PREFIX) :] if model.startswith(CAPABILITY_PREFIX) else model
        )
    if how == "pattern":
        return "pattern:" + _pattern_glob(rule, patterns)
    return route if route in groups else "other"


def _pattern_glob(rule: str | None, patterns: Any) -> str:
    # the plan writes pattern rules as "pattern #N 'glob' -> provider as 'upstream'"
    if rule and rule.startswith("pattern #"):
        num = rule[9:].split(" ", 1)[0]
        if num.isdigit():
            idx = int(num) - 1
            for p in patterns:
                if getattr(p, "index", None) == idx:
                    return str(p.glob)
    return "?"


class MetricsObserver:
    """The Prometheus observer of one gateway. ``registry`` is private to it.

    Per request it only updates plain dicts and lists keyed by label tuples (histograms by
    :func:`bisect.bisect_left` into per-bucket counts); :class:`_RequestCollector` turns them into metric
    families when Prometheus scrapes. ``request_done`` runs on the event loop thread only.
    """

    def __init__(self, gateway: GatewayLike, process_metrics: bool = True) -> None:
        self.gateway = gateway
        self.registry = CollectorRegistry(auto_describe=True)
        # (route, provider, endpoint, status) -> [requests, duration sum, duration bucket counts...]
        self._requests: dict[tuple[str, str, str, int], list[Any]] = {}
        self._ttft: dict[tuple[str, str], list[Any]] = {}  # (route, provider) -> [sum, bucket counts...]
        self._overhead: list[Any] = [0.0] + [0] * (len(OVERHEAD_BUCKETS) + 1)
        self._tokens: dict[tuple[str, str], list[int]] = {}  # (route, provider) -> [prompt, completion]
        self._attempts: dict[tuple[str, str], int] = {}  # (provider, outcome) -> attempts
        self._fallbacks: dict[str, int] = {}  # route -> requests that needed a fallback
        self._doors: dict[tuple[str, str, int], int] = {}  # (door, endpoint, status) -> requests
        self._truncated: dict[tuple[str, str], int] = {}  # (route, provider) -> prompts Ollama cut
        self._reloads = dict.fromkeys(RELOAD_RESULTS, 0)
        self._key_requests: dict[tuple[str, int], int] = {}  # (key name, status) -> requests
        self._key_tokens: dict[str, list[int]] = {}  # key name -> [prompt, completion]
        self._key_limited: dict[tuple[str, str], int] = {}  # (key name, limit) -> refusals
        self._cache: dict[tuple[str, str], int] = {}  # (route, hit|miss|bypass|error) -> requests
        self._cache_lookup: list[Any] = [0.0] + [0] * (len(CACHE_LOOKUP_BUCKETS) + 1)
        self._drop_sources: list[Callable[[], tuple[Mapping[str, int], int]]] = []
        self.before_collect: list[Callable[[], None]] = []  # fold what is batched before a scrape
        # `aib serve --workers N`: adds the other workers' counters at scrape time (aib.observe.shared)
        self.siblings: Callable[[], list[dict[str, Any]]] | None = None
        self._routes: dict[tuple[str | None, str | None, str | None], str] = {}
        self._routes_plan: object = None
        self.registry.register(_RequestCollector(self))
        self.registry.register(_LiveCollector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # ------------------------------------------------------------------ per request

    def request_done(self, record: RequestRecord) -> None:
        """Count one finished request (the thread writer's way; ``aib serve`` folds batches)."""
        self.fold((to_wire(record),))

    def fold(self, batch: Iterable[Wire]) -> None:
        """Count finished requests given as wire tuples (the writer client does this every tick, in a
        tight loop: far cheaper per request than the same work between two requests)."""
        plan = self.gateway.plan
        if plan is not self._routes_plan:
            self._routes = {}
            self._routes_plan = plan
        routes, requests, attempts, o = self._routes, self._requests, self._attempts, self._overhead
        for w in batch:
            (
                _, endpoint, model, _, stream, how_route, how, rule, provider, _, status, _, code, ttfb, total,
                upstream_s, pt, ct, gone, _, atts, _, _, kname, door, cut, *_,
            ) = w  # fmt: skip
            if kname is not None:  # a client key's name (bounded by the number of keys)
                self._count_key(kname, status or (499 if gone else 0), code, pt, ct)
            rkey = (how_route, how, rule)
            route = routes.get(rkey)
            if route is None:
                route = label(how_route, how, rule, model, plan.groups, plan.patterns)
                if len(routes) >= _ROUTE_CACHE_MAX:
                    routes.clear()
                routes[rkey] = route
            if len(w) > CACHE and w[CACHE] is not None:
                self._count_cache(route, w[CACHE], w[CACHE_LOOKUP_S])
            provider = provider or "none"
            key = (route, provider, endpoint, status or (499 if gone else 0))
            c = requests.get(key)
            if c is None:
                c = requests[key] = [0, 0.0] + [0] * (len(DURATION_BUCKETS) + 1)
            c[0] += 1
            c[1] += total
            dkey = (door, endpoint, key[3])
            self._doors[dkey] = self._doors.get(dkey, 0) + 1
            if cut:
                self._truncated[(route, provider)] = self._truncated.get((route, provider), 0) + 1
            c[2 + bisect_left(DURATION_BUCKETS, total)] += 1
            over = total - upstream_s
            if over < 0.0:
                over = 0.0
            o[0] += over
            o[1 + bisect_left(OVERHEAD_BUCKETS, over)] += 1
            if stream and ttfb is not None:
                h = self._ttft.get((route, provider))
                if h is None:
                    h = self._ttft[(route, provider)] = [0.0] + [0] * (len(TTFT_BUCKETS) + 1)
                h[0] += ttfb
                h[1 + bisect_left(TTFT_BUCKETS, ttfb)] += 1
            if pt or ct:
                tok = self._tokens.get((route, provider))
                if tok is None:
                    tok = self._tokens[(route, provider)] = [0, 0]
                if type(pt) is int and pt > 0:
                    tok[0] += pt
                if type(ct) is int and ct > 0:
                    tok[1] += ct
            if atts:
                for a in atts:  # (target, provider, route, status, error, ttfb, duration, ok)
                    akey = (
                        a[1],
                        "ok" if a[7] and (a[3] is None or a[3] < 400) else outcome(a[7], a[3], a[4]),
                    )
                    attempts[akey] = attempts.get(akey, 0) + 1
                # a fallback: a failed attempt before the last, or an answer from a later route of the chain
                if len(atts) > 1 or atts[-1][2] != how_route:
                    self._fallbacks[route] = self._fallbacks.get(route, 0) + 1

    def _count_cache(self, route: str, result: str, lookup_s: float | None) -> None:
        ck = (route, result)
        self._cache[ck] = self._cache.get(ck, 0) + 1
        if lookup_s is not None:
            h = self._cache_lookup
            h[0] += lookup_s
            h[1 + bisect_left(CACHE_LOOKUP_BUCKETS, lookup_s)] += 1

    def _count_key(self, name: str, status: int, code: str | None, pt: object, ct: object) -> None:
        kr = self._key_requests
        kr[(name, status)] = kr.get((name, status), 0) + 1
        if type(pt) is int or type(ct) is int:
            tok = self._key_tokens.get(name)
            if tok is None:
                tok = self._key_tokens[name] = [0, 0]
            if type(pt) is int and pt > 0:
                tok[0] += pt
            if type(ct) is int and ct > 0:
                tok[1] += ct
        if status == 429 and code in LIMIT_CODES:
            kl = self._key_limited
            kl[(name, code)] = kl.get((name, code), 0) + 1

    # ------------------------------------------------------------------ called by other code

    def reload_done(self, result: str) -> None:
        """Count a configuration reload: ``success`` or ``failure``."""
        self._reloads["success" if result in ("success", "ok") else "failure"] += 1

    def add_drop_source(self, source: Callable[[], tuple[Mapping[str, int], int]]) -> None:
        """Something that loses entries on purpose (the request log): ``() -> ({reason: n}, queued)``."""
        self._drop_sources.append(source)

    # ------------------------------------------------------------------ several workers

    def counters(self) -> dict[str, Any]:
        """Every counter of this process, as plain containers (marshal-able; the live objects)."""
        return {
            "requests": self._requests,
            "ttft": self._ttft,
            "overhead": self._overhead,
            "tokens": self._tokens,
            "attempts": self._attempts,
            "fallbacks": self._fallbacks,
            "doors": self._doors,
            "truncated": self._truncated,
            "reloads": self._reloads,
            "key_requests": self._key_requests,
            "key_tokens": self._key_tokens,
            "key_limited": self._key_limited,
            "cache": self._cache,
            "cache_lookup": self._cache_lookup,
            **_store_counters(self.gateway),
            "inflight": self.gateway.inflight,
        }

    def view(self) -> dict[str, Any]:
        """What a scrape shows: this process's counters, plus its sibling workers' when it has any."""
        own = self.counters()
        if self.siblings is None:
            return own
        return merge_counters([own, *self.siblings()])

    # ------------------------------------------------------------------ exposition

    def render(self, accept: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def asgi(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        """``GET /metrics`` as a plain ASGI callable."""
        accept = ""
        for k, v in scope.get("headers", ()):
            if k == b"accept":
                accept = v.decode("latin-1")
                break
        body, ctype = self.render(accept)
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _store_counters(gateway: Any) -> dict[str, Any]:
    """The response cache's and the Redis link's own counters (read from the gateway, duck-typed)."""
    out: dict[str, Any] = {}
    cache = getattr(gateway, "cache", None)
    if cache is not None:
        out["cache_store"] = cache.counters()
    link = getattr(gateway, "link", None)
    if link is not None:
        out["redis_errors"] = dict(link.errors)
    return out


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):  # another version's buckets: not addable
            return a
        return [_add(x, y) for x, y in zip(a, b, strict=True)]
    return a + b


def merge_counters(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counters of several workers (same shapes: label tuple -> number or bucket list)."""
    out: dict[str, Any] = {}
    for part in parts:
        for name, value in part.items():
            have = out.get(name)
            if have is None:
                out[name] = dict(value) if isinstance(value, dict) else value
            elif isinstance(value, dict):
                for key, v in value.items():
                    have[key] = _add(have[key], v) if key in have else v
            else:
                out[name] = _add(have, value)
    return out


def _buckets(bounds: tuple[float, ...], counts: list[Any]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from per-bucket counts (the last count is the +Inf bucket)."""
    out: list[tuple[str, float]] = []
    acc = 0
    for le, n in zip(_LE[bounds], counts, strict=True):
        acc += n
        out.append((le, float(acc)))
    return out


_LE: dict[tuple[float, ...], list[str]] = {
    b: [floatToGoString(x) for x in b] + ["+Inf"]  # type: ignore[no-untyped-call]  # le as Histogram writes it
    for b in (DURATION_BUCKETS, TTFT_BUCKETS, OVERHEAD_BUCKETS, CACHE_LOOKUP_BUCKETS)
}


class _RequestCollector(Collector):
    """The per-request counters and histograms, built from the observer's dicts at scrape time."""

    def __init__(self, obs: MetricsObserver) -> None:
        self.obs = obs

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        o = self.obs
        for hook in o.before_collect:
            hook()
        v = o.view()
        rp_labels = ["route", "provider"]
        requests = CounterMetricFamily(
            "aib_requests",
            "Requests answered, by route, provider, endpoint and HTTP status sent.",
            labels=["route", "provider", "endpoint", "status"],
        )
        per_rp: dict[tuple[str, str], list[Any]] = {}
        for (route, provider, endpoint, status), c in list(v["requests"].items()):
            requests.add_metric([route, provider, endpoint, str(status)], float(c[0]))
            acc = per_rp.get((route, provider))
            if acc is None:
                per_rp[(route, provider)] = list(c[1:])
            else:
                per_rp[(route, provider)] = [a + b for a, b in zip(acc, c[1:], strict=True)]
        yield requests
        duration = HistogramMetricFamily(
            "aib_request_duration_seconds",
            "Time from request received to response finished.",
            labels=rp_labels,
        )
        for rp, h in per_rp.items():
            duration.add_metric(list(rp), _buckets(DURATION_BUCKETS, h[1:]), h[0])
        yield duration
        ttft = HistogramMetricFamily(
            "aib_time_to_first_token_seconds",
            "Streams: time from request received to the first byte sent.",
            labels=rp_labels,
        )
        for rp, h in list(v["ttft"].items()):
            ttft.add_metric(list(rp), _buckets(TTFT_BUCKETS, h[1:]), h[0])
        yield ttft
        overhead = HistogramMetricFamily(
            "aib_gateway_overhead_seconds",
            "Time the gateway added: total minus time spent waiting on upstreams.",
        )
        h = list(v["overhead"])
        overhead.add_metric([], _buckets(OVERHEAD_BUCKETS, h[1:]), h[0])
        yield overhead
        prompt = CounterMetricFamily(
            "aib_prompt_tokens", "Prompt tokens reported by upstreams.", labels=rp_labels
        )
        completion = CounterMetricFamily(
            "aib_completion_tokens", "Completion tokens reported by upstreams.", labels=rp_labels
        )
        for rp, (p_n, c_n) in list(v["tokens"].items()):
            prompt.add_metric(list(rp), float(p_n))
            completion.add_metric(list(rp), float(c_n))
        yield prompt
        yield completion
        fallbacks = CounterMetricFamily(
            "aib_fallbacks",
            "Requests served by a fallback (or failed after trying more than one).",
            labels=["route"],
        )
        for route, n in list(v["fallbacks"].items()):
            fallbacks.add_metric([route], float(n))
        yield fallbacks
        attempts = CounterMetricFamily(
            "aib_upstream_attempts",
            "Upstream attempts by provider and outcome.",
            labels=["provider", "outcome"],
        )
        for (provider, outcome), n in list(v["attempts"].items()):
            attempts.add_metric([provider, outcome], float(n))
        yield attempts
        doors = CounterMetricFamily(
            "aib_door_requests",
            "Requests by the API the client spoke (openai, anthropic, ollama, responses), endpoint and status.",
            labels=["door", "endpoint", "status"],
        )
        for (door, endpoint, status), n in list(v.get("doors", {}).items()):
            doors.add_metric([door, endpoint, str(status)], float(n))
        yield doors
        truncated = CounterMetricFamily(
            "aib_prompt_truncated",
            "Prompts an Ollama upstream cut to fit its context (num_ctx): raise the model's context_length.",
            labels=rp_labels,
        )
        for rp, n in list(v.get("truncated", {}).items()):
            truncated.add_metric(list(rp), float(n))
        yield truncated
        reloads = CounterMetricFamily(
            "aib_config_reloads", "Configuration reloads by result.", labels=["result"]
        )
        for result, n in v["reloads"].items():
            reloads.add_metric([result], float(n))
        yield reloads
        yield from _key_families(v)
        yield from _cache_families(v)


def _cache_families(v: dict[str, Any]) -> Iterator[Metric]:
    """The response cache (aib.cache) and Redis (aib.shared.link)."""
    results = CounterMetricFamily(
        "aib_cache_requests",
        "Requests of routes that cache, by what the cache did: hit, miss, bypass, error.",
        labels=["route", "result"],
    )
    for (route, result), n in list(v.get("cache", {}).items()):
        results.add_metric([route, result], float(n))
    yield results
    lookup = HistogramMetricFamily("aib_cache_lookup_seconds", "Time a cache lookup took (memory or Redis).")
    h = list(v.get("cache_lookup") or [0.0] + [0] * (len(CACHE_LOOKUP_BUCKETS) + 1))
    lookup.add_metric([], _buckets(CACHE_LOOKUP_BUCKETS, h[1:]), h[0])
    yield lookup
    store = v.get("cache_store") or {}
    yield CounterMetricFamily(
        "aib_cache_stored", "Answers written to the cache.", value=float(store.get("stored", 0))
    )
    yield CounterMetricFamily(
        "aib_cache_stored_bytes",
        "Bytes of answers written to the cache.",
        value=float(store.get("stored_bytes", 0)),
    )
    if "entries" in store:  # the memory backend (per process, summed over workers)
        yield GaugeMetricFamily(
            "aib_cache_entries", "Answers in the memory cache.", value=float(store["entries"])
        )
        yield GaugeMetricFamily(
            "aib_cache_bytes", "Bytes the memory cache holds.", value=float(store["bytes"])
        )
        yield CounterMetricFamily(
            "aib_cache_evictions",
            "Answers the memory cache dropped to make room (least recently used first).",
            value=float(store["evictions"]),
        )
    if "redis_errors" in v:
        errors = CounterMetricFamily(
            "aib_redis_errors",
            "Redis calls that failed or were skipped while Redis was down, by operation.",
            labels=["op"],
        )
        for op, n in sorted(v["redis_errors"].items()):
            errors.add_metric([op], float(n))
        yield errors


def _key_families(v: dict[str, Any]) -> Iterator[Metric]:
    """Usage per client key, labelled by the key's name (never the key)."""
    requests = CounterMetricFamily(
        "aib_key_requests", "Requests per client key, by HTTP status sent.", labels=["key", "status"]
    )
    for (name, status), n in list(v.get("key_requests", {}).items()):
        requests.add_metric([name, str(status)], float(n))
    yield requests
    tokens = CounterMetricFamily(
        "aib_key_tokens", "Tokens per client key, as upstreams reported them.", labels=["key", "type"]
    )
    for name, (p_n, c_n) in list(v.get("key_tokens", {}).items()):
        tokens.add_metric([name, "prompt"], float(p_n))
        tokens.add_metric([name, "completion"], float(c_n))
    yield tokens
    limited = CounterMetricFamily(
        "aib_key_limited", "Requests a client key's limit refused (429), by limit.", labels=["key", "limit"]
    )
    for (name, limit), n in list(v.get("key_limited", {}).items()):
        limited.add_metric([name, limit], float(n))
    yield limited


class _LiveCollector(Collector):
    """State read at scrape time from the gateway (never on the request path)."""

    def __init__(self, obs: MetricsObserver) -> None:
        self.obs = obs
        self._targets: tuple[object, list[str]] = (None, [])

    def describe(self) -> list[Metric]:
        return []  # the families depend on live state; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        gw = self.obs.gateway
        plan, state = gw.plan, gw.state
        inflight = gw.inflight
        if self.obs.siblings is not None:
            inflight += sum(int(p.get("inflight", 0)) for p in self.obs.siblings())
        yield GaugeMetricFamily("aib_inflight_requests", "Requests being served now.", value=inflight)
        up = GaugeMetricFamily(
            "aib_provider_up", "1 if the last health probe succeeded, 0 if it failed.", labels=["provider"]
        )
        lat = GaugeMetricFamily(
            "aib_provider_probe_latency_seconds", "Duration of the last health probe.", labels=["provider"]
        )
        for name, info in plan.providers.items():
            h = state.health.get(name)
            if h is None or not getattr(info, "enabled", True):
                continue
            if h.healthy is not None:
                up.add_metric([name], 1.0 if h.healthy else 0.0)
            if h.last_latency_ms is not None:
                lat.add_metric([name], h.last_latency_ms / 1000.0)
        yield up
        yield lat
        if self._targets[0] is not plan:
            self._targets = (plan, sorted(plan.targets()))
        br = GaugeMetricFamily(
            "aib_breaker_state",
            "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"],
        )
        for tid in self._targets[1]:
            st = state.targets.get(tid)
            br.add_metric([tid], float(BREAKER_VALUES[st.breaker.current()]) if st is not None else 0.0)
        yield br
        yield from signal_families(plan, state)  # backend signals (aib.observe.signal_metrics)
        yield InfoMetricFamily("aib_config", "The routing plan in use.", value={"version": str(plan.version)})
        link = getattr(gw, "link", None)
        if link is not None:
            yield GaugeMetricFamily(
                "aib_redis_up",
                "1 while this process can use Redis, 0 while it is down.",
                value=1.0 if link.ok else 0.0,
            )
        if self.obs._drop_sources:
            dropped = CounterMetricFamily(
                "aib_request_log_dropped",
                "Request log entries dropped instead of slowing requests.",
                labels=["reason"],
            )
            queued = 0
            totals: dict[str, int] = {}
            for source in self.obs._drop_sources:
                counts, q = source()
                queued += q
                for reason, n in counts.items():
                    totals[reason] = totals.get(reason, 0) + n
            for reason, n in sorted(totals.items()):
                dropped.add_metric([reason], float(n))
            yield dropped
            yield GaugeMetricFamily(
                "aib_request_log_queue_depth", "Entries waiting for the request log writer.", value=queued
            )
