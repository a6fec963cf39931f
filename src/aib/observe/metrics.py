"""Prometheus metrics: one observer per gateway, with its own registry (no global state).

Per finished request :meth:`MetricsObserver.request_done` does a few dict lookups and increments
label children cached by their label tuple. Live state (in-flight requests, provider health,
breakers, the config version, request-log drops) is read when Prometheus scrapes, by a collector.

Labels only ever take configured names, so the number of series is bounded by the config: a route
that is not a configured one is labelled by how it matched (``pattern:ollama/*``, ``capability:code``,
``unknown``), status is the HTTP code sent to the client (``499`` when the client left first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from aib.observe.records import Attempt, RequestRecord

# LLM requests last from milliseconds (embeddings, errors) to minutes (long generations)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
# the gateway's own added time: tens of microseconds to a few milliseconds
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
RELOAD_RESULTS = ("success", "failure")
ATTEMPT_OUTCOMES = (
    "ok", "rejected", "cancelled", "timeout", "connect_error", "rate_limited", "http_error", "bad_response",
)  # fmt: skip
CAPABILITY_PREFIX = "capability/"
_ROUTE_CACHE_MAX = 4096
# per (route, provider, endpoint, status): requests.inc, duration.observe, (route, provider)
_Children = tuple[Callable[[], None], Callable[[float], None], tuple[str, str]]


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
    if a.ok:
        return "rejected" if a.status is not None and a.status >= 400 else "ok"
    err = a.error or ""
    if err == "client disconnected":
        return "cancelled"
    if "within the time limit" in err or "read timeout" in err:
        return "timeout"
    if a.status is None:
        return "connect_error"
    if a.status == 429:
        return "rate_limited"
    if a.status >= 400:
        return "http_error"
    return "bad_response"


def route_label(record: RequestRecord, groups: Mapping[str, Any], patterns: Any) -> str:
    """The route as a configured name, or the kind of rule that matched (bounded by the config)."""
    route, how = record.route, record.matched_by
    if route is None:
        return "unknown"
    if how == "capability":
        model = record.model
        return "capability:" + (
            model[len(CAPABILITY_PREFIX) :] if model.startswith(CAPABILITY_PREFIX) else model
        )
    if how == "pattern":
        return "pattern:" + _pattern_glob(record.rule, patterns)
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
    """The Prometheus observer of one gateway. ``registry`` is private to it."""

    def __init__(self, gateway: GatewayLike, process_metrics: bool = True) -> None:
        self.gateway = gateway
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aib_requests", "Requests answered, by route, provider, endpoint and HTTP status sent.",
            ("route", "provider", "endpoint", "status"), registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "aib_request_duration_seconds", "Time from request received to response finished.",
            ("route", "provider"), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "aib_time_to_first_token_seconds", "Streams: time from request received to the first byte sent.",
            ("route", "provider"), buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "aib_gateway_overhead_seconds", "Time the gateway added: total minus time spent waiting on upstreams.",
            buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "aib_prompt_tokens", "Prompt tokens reported by upstreams.", ("route", "provider"), registry=r
        )
        self.completion_tokens = Counter(
            "aib_completion_tokens",
            "Completion tokens reported by upstreams.",
            ("route", "provider"),
            registry=r,
        )
        self.fallbacks = Counter(
            "aib_fallbacks",
            "Requests served by a fallback (or failed after trying more than one).",
            ("route",),
            registry=r,
        )
        self.attempts = Counter(
            "aib_upstream_attempts",
            "Upstream attempts by provider and outcome.",
            ("provider", "outcome"),
            registry=r,
        )
        self.reloads = Counter(
            "aib_config_reloads", "Configuration reloads by result.", ("result",), registry=r
        )
        for res in RELOAD_RESULTS:
            self.reloads.labels(res)
        self._drop_sources: list[Callable[[], tuple[Mapping[str, int], int]]] = []
        r.register(_LiveCollector(self))
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        # caches: label tuple -> bound methods of the children
        self._children: dict[tuple[str, str, str, str], _Children] = {}
        self._ttft_observe: dict[tuple[str, str], Callable[[float], None]] = {}
        self._token_inc: dict[tuple[str, str], tuple[Callable[[float], None], Callable[[float], None]]] = {}
        self._attempt_inc: dict[tuple[str, str], Callable[..., None]] = {}
        self._fallback_inc: dict[str, Callable[..., None]] = {}
        self._routes: dict[tuple[str | None, str | None, str | None], str] = {}
        self._routes_plan: object = None
        self._overhead_observe = self.overhead.observe

    # ------------------------------------------------------------------ per request

    def request_done(self, record: RequestRecord) -> None:
        plan = self.gateway.plan
        if plan is not self._routes_plan:
            self._routes = {}
            self._routes_plan = plan
        rkey = (record.route, record.matched_by, record.rule)
        route = self._routes.get(rkey)
        if route is None:
            route = route_label(record, plan.groups, plan.patterns)
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[rkey] = route
        provider = record.provider or "none"
        key = (route, provider, record.endpoint, status_label(record))
        ch = self._children.get(key)
        if ch is None:
            ch = self._children[key] = self._make_children(key)
        req_inc, dur_observe, rp = ch
        req_inc()
        dur_observe(record.total_s)
        self._overhead_observe(record.overhead_s)
        if record.stream and record.ttfb_s is not None:
            ttft_observe = self._ttft_observe.get(rp)
            if ttft_observe is None:
                ttft_observe = self._ttft_observe[rp] = self.ttft.labels(*rp).observe
            ttft_observe(record.ttfb_s)
        pt, ct = record.prompt_tokens, record.completion_tokens
        if pt or ct:
            tok = self._token_inc.get(rp)
            if tok is None:
                tok = self._token_inc[rp] = (
                    self.prompt_tokens.labels(*rp).inc,
                    self.completion_tokens.labels(*rp).inc,
                )
            if type(pt) is int and pt > 0:
                tok[0](pt)
            if type(ct) is int and ct > 0:
                tok[1](ct)
        attempts = record.attempts
        if attempts:
            for a in attempts:
                akey = (a.provider, attempt_outcome(a))
                inc = self._attempt_inc.get(akey)
                if inc is None:
                    inc = self._attempt_inc[akey] = self.attempts.labels(*akey).inc
                inc()
            # a fallback: a failed attempt before the last, or an answer from a later route of the chain
            if len(attempts) > 1 or attempts[-1].route != record.route:
                finc = self._fallback_inc.get(route)
                if finc is None:
                    finc = self._fallback_inc[route] = self.fallbacks.labels(route).inc
                finc()

    def _make_children(self, key: tuple[str, str, str, str]) -> _Children:
        rp = (key[0], key[1])
        return (self.requests.labels(*key).inc, self.duration.labels(*rp).observe, rp)

    # ------------------------------------------------------------------ called by other code

    def reload_done(self, result: str) -> None:
        """Count a configuration reload: ``success`` or ``failure``."""
        self.reloads.labels("success" if result in ("success", "ok") else "failure").inc()

    def add_drop_source(self, source: Callable[[], tuple[Mapping[str, int], int]]) -> None:
        """Something that loses entries on purpose (the request log): ``() -> ({reason: n}, queued)``."""
        self._drop_sources.append(source)

    # ------------------------------------------------------------------ exposition

    def render(self, accept: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(_WithoutCreated(self.registry)), content_type

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


class _WithoutCreated(Collector):
    """The registry without the ``*_created`` timestamp series (they double the series count for nothing)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for m in self.registry.collect():  # fresh Metric objects on every collect
            m.samples = [s for s in m.samples if not s.name.endswith("_created")]
            yield m


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
        yield GaugeMetricFamily("aib_inflight_requests", "Requests being served now.", value=gw.inflight)
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
        yield InfoMetricFamily("aib_config", "The routing plan in use.", value={"version": str(plan.version)})
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
