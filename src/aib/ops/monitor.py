"""The numbers behind `aib monitor`: scrapes of a gateway's ``/health`` and ``/metrics``, and what they say.

A :class:`Scrape` is one read of both endpoints (or why it failed). :func:`summarize` turns the scrapes
of the last ``window`` seconds into a :class:`View`: per route the request rate, errors and fallbacks
(counter differences between the oldest and newest scrape), latency p50/p95 from the differences of
the duration histogram's buckets; per provider its health (from ``/health``) and upstream attempts.
A counter that went down means the gateway restarted: its new value counts from zero.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from aib.cli.http import GatewayDown, request_json
from aib.clientauth import headers_for

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]  # sample name -> labels -> value


@dataclass
class Scrape:
    at: float  # time.monotonic()
    health: dict[str, Any] | None = None
    samples: Samples = field(default_factory=dict)
    error: str | None = None  # set when the gateway could not be read

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition -> {sample name: {labels: value}}."""
    out: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = float(s.value)
    return dict(out)


def _get_text(url: str, timeout: float) -> str:
    req = urllib.request.Request(url, headers=headers_for(urlsplit(url).path))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return str(resp.read().decode("utf-8", errors="replace"))
    except urllib.error.HTTPError as exc:
        exc.close()
        raise GatewayDown(f"{url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise GatewayDown(f"nothing answers at {url}: {getattr(exc, 'reason', exc)}") from None


def scrape(gateway: str, timeout: float = 2.0) -> Scrape:
    """Read ``/health`` and ``/metrics`` once; never raises (a failure is the scrape's ``error``)."""
    base = gateway.rstrip("/")
    at = time.monotonic()
    try:
        _status, health = request_json(base + "/health", timeout=timeout)
        if not isinstance(health, dict) or "providers" not in health:
            return Scrape(at, error=f"{base}/health did not answer the gateway's JSON (not aib?)")
        samples = parse_metrics(_get_text(base + "/metrics", timeout))
    except GatewayDown as exc:
        return Scrape(at, error=str(exc))
    except ValueError as exc:  # the metrics text did not parse
        return Scrape(at, error=f"{base}/metrics is not Prometheus text: {exc}")
    return Scrape(at, health, samples)


# --------------------------------------------------------------------------- arithmetic


def _delta(new: float, old: float | None) -> float:
    if old is None or new < old:  # no earlier value, or a restart reset the counter
        return new
    return new - old


def _sum_by(
    new: Samples, old: Samples | None, name: str, key: str, where: Any = None
) -> tuple[dict[str, float], dict[str, float]]:
    """(totals, deltas) of a counter summed by one label; ``where(labels)`` filters series."""
    totals: dict[str, float] = defaultdict(float)
    deltas: dict[str, float] = defaultdict(float)
    before = (old or {}).get(name, {})
    for labels, value in new.get(name, {}).items():
        d = dict(labels)
        if where is not None and not where(d):
            continue
        totals[d.get(key, "")] += value
        deltas[d.get(key, "")] += _delta(value, before.get(labels)) if old is not None else value
    return dict(totals), dict(deltas)


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Like PromQL's histogram_quantile: ``buckets`` are (upper bound, cumulative count), any order."""
    bs = sorted(buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in bs:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # in the +Inf bucket: the highest finite bound is all we know
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _buckets(
    new: Samples, old: Samples | None, name: str, key: str | None
) -> dict[str, list[tuple[float, float]]]:
    """Histogram bucket differences summed by one label (``key`` None: everything together)."""
    acc: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    before = (old or {}).get(name, {})
    for labels, value in new.get(name, {}).items():
        d = dict(labels)
        group = d.get(key, "") if key else ""
        le = float(d.get("le", "inf"))
        acc[group][le] += _delta(value, before.get(labels)) if old is not None else value
    return {g: list(v.items()) for g, v in acc.items()}


# --------------------------------------------------------------------------- the view


@dataclass
class RouteRow:
    route: str
    requests: float  # since the gateway started (as are errors and fallbacks)
    rate: float | None  # requests per second over the window; None with a single scrape
    errors: float  # answers other than 2xx/3xx, client hang-ups (499) not counted
    fallbacks: float
    new_errors: float  # in the window
    new_fallbacks: float  # in the window
    p50_s: float | None
    p95_s: float | None
    latency_in_window: bool  # False: no request finished in the window, so p50/p95 are since start


@dataclass
class ProviderRow:
    name: str
    type: str
    status: str
    probe_ms: float | None
    last_error: str | None
    attempts_rate: float | None
    failed_attempts: float  # in the window
    open_breakers: int
    signals: str = ""  # what the server says about its load (backend signals), with the reading's age


@dataclass
class View:
    gateway: str
    up: bool
    error: str | None = None
    window_s: float = 0.0  # what the rates and percentiles cover (0: one scrape, since start)
    status: str | None = None
    plan_version: str | None = None
    inflight: float | None = None
    rate: float | None = None
    uptime_s: float | None = None
    overhead_p50_s: float | None = None
    routes: list[RouteRow] = field(default_factory=list)
    providers: list[ProviderRow] = field(default_factory=list)
    last_ok_age_s: float | None = None  # when down: how long ago the gateway last answered


def _is_error(labels: dict[str, str]) -> bool:
    status = labels.get("status", "")
    return not status.startswith(("2", "3")) and status != "499"


def summarize(gateway: str, scrapes: Iterable[Scrape], window_s: float = 60.0) -> View:
    """The view from the newest scrape and the oldest good one at most ``window_s`` older."""
    history = list(scrapes)
    latest = history[-1] if history else Scrape(time.monotonic(), error="not scraped yet")
    good = [s for s in history if s.ok]
    if not good:
        return View(gateway, up=False, error=latest.error)
    new = good[-1]
    olds = [s for s in good[:-1] if new.at - s.at <= window_s]
    old = olds[0] if olds else None
    dt = new.at - old.at if old is not None else 0.0
    view = _view_of(gateway, new, old, dt)
    if not latest.ok:
        view.up, view.error, view.last_ok_age_s = False, latest.error, latest.at - new.at
    return view


def _view_of(gateway: str, new: Scrape, old: Scrape | None, dt: float) -> View:
    n, o = new.samples, old.samples if old is not None else None
    health = new.health or {}
    rate = (lambda x: x / dt) if dt > 0 else (lambda x: None)
    view = View(
        gateway, up=True, window_s=dt, status=health.get("status"), plan_version=health.get("plan_version")
    )
    inflight = n.get("aib_inflight_requests", {})
    view.inflight = sum(inflight.values()) if inflight else None
    start = next(iter(n.get("process_start_time_seconds", {}).values()), None)
    view.uptime_s = time.time() - start if start else None
    for since in (o, None):  # the window, else since start
        over = _buckets(n, since, "aib_gateway_overhead_seconds_bucket", None).get("")
        view.overhead_p50_s = quantile(0.5, over) if over else None
        if view.overhead_p50_s is not None:
            break

    totals, deltas = _sum_by(n, o, "aib_requests_total", "route")
    err_tot, err_new = _sum_by(n, o, "aib_requests_total", "route", _is_error)
    fb_tot, fb_new = _sum_by(n, o, "aib_fallbacks_total", "route")
    lat_new = _buckets(n, o, "aib_request_duration_seconds_bucket", "route")
    lat_all = _buckets(n, None, "aib_request_duration_seconds_bucket", "route")
    view.rate = rate(sum(deltas.values())) if totals else (0.0 if dt > 0 else None)
    for route in sorted(totals, key=lambda r: (-deltas.get(r, 0), -totals[r], r)):
        b = lat_new.get(route, [])
        recent = quantile(0.5, b) is not None
        if not recent:
            b = lat_all.get(route, [])
        view.routes.append(
            RouteRow(
                route, totals[route], rate(deltas.get(route, 0.0)), err_tot.get(route, 0.0),
                fb_tot.get(route, 0.0), err_new.get(route, 0.0), fb_new.get(route, 0.0),
                quantile(0.5, b), quantile(0.95, b), recent,
            )
        )  # fmt: skip

    _, a_delta = _sum_by(n, o, "aib_upstream_attempts_total", "provider")
    _, a_failed = _sum_by(n, o, "aib_upstream_attempts_total", "provider", lambda d: d.get("outcome") != "ok")
    for name, p in (health.get("providers") or {}).items():
        breakers = p.get("breakers") or {}
        view.providers.append(
            ProviderRow(
                name, str(p.get("type", "")), str(p.get("status", "")), p.get("last_probe_latency_ms"),
                p.get("last_error") if p.get("status") != "healthy" else None,
                rate(a_delta.get(name, 0.0)), a_failed.get(name, 0.0),
                sum(1 for b in breakers.values() if isinstance(b, dict) and b.get("state") == "open"),
                signal_text(p.get("signals")),
            )
        )  # fmt: skip
    return view


def signal_text(s: Any) -> str:
    """A provider's backend signals in a few words: queue (or loaded models) and the reading's age."""
    if not isinstance(s, dict):
        return ""
    state = s.get("state")
    if state == "unsupported":
        return "n/a"
    if state == "none":
        return "no reading"
    parts = []
    if "running" in s:
        parts.append(f"{s['running']:g} run / {s.get('waiting', 0):g} wait")
    if "kv_cache" in s:
        parts.append(f"kv {100 * s['kv_cache']:.0f}%")
    if "loaded_models" in s:
        parts.append(f"{len(s['loaded_models'])} loaded")
    age = s.get("age_s")
    if isinstance(age, (int, float)):
        parts.append(f"{age:.1f}s old" if state == "fresh" else f"{age:.1f}s old, {state}")
    return ", ".join(parts)
