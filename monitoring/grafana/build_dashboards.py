"""Writes the five Grafana dashboards in monitoring/grafana/dashboards/ from the definitions below.

    .venv/bin/python monitoring/grafana/build_dashboards.py           # write the JSON files
    .venv/bin/python monitoring/grafana/build_dashboards.py --check   # exit 1 if a file is stale

Every query uses only metrics the gateway exports on /metrics (``aib_*``, ``process_*``); a test runs
each one against a real Prometheus that scraped a gateway after real traffic. Template variables:
``$datasource`` (any Prometheus), ``$route`` and ``$provider`` (multi-select, "All" = ``.*``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
R = 'route=~"$route"'
P = 'provider=~"$provider"'
RP = f"{R}, {P}"
# process_* series of gateways only (vLLM and others export process_* too): join on aib_config_info
ONLY_GATEWAYS = "* on (job, instance) group_left () count by (job, instance) (aib_config_info)"


def q(expr: str, legend: str = "", instant: bool = False) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend or "__auto", "instant": instant, "range": not instant}


@dataclass
class Panel:
    title: str
    targets: list[dict[str, Any]]
    kind: str = "timeseries"
    unit: str = "short"
    w: int = 12
    h: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    mappings: list[dict[str, Any]] = field(default_factory=list)
    thresholds: list[tuple[float | None, str]] | None = None
    decimals: int | None = None
    minimum: float | None = None
    maximum: float | None = None


def stat(title: str, expr: str, unit: str = "short", legend: str = "", **kw: Any) -> Panel:
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "area",
    }
    return Panel(
        title, [q(expr, legend)], "stat", unit, w=kw.pop("w", 4), h=kw.pop("h", 4), options=options, **kw
    )


def ts(title: str, *targets: tuple[str, str], unit: str = "short", **kw: Any) -> Panel:
    return Panel(title, [q(e, leg) for e, leg in targets], "timeseries", unit, **kw)


UP_MAPPING = [
    {
        "type": "value",
        "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}},
    }
]
BREAKER_MAPPING = [
    {
        "type": "value",
        "options": {
            "0": {"text": "closed", "color": "green"},
            "1": {"text": "half-open", "color": "yellow"},
            "2": {"text": "open", "color": "red"},
        },
    }
]


def quantile(qv: float, metric: str, by: str = "", sel: str = RP) -> str:
    grouping = f"le, {by}" if by else "le"
    return f"histogram_quantile({qv}, sum by ({grouping}) (rate({metric}_bucket{{{sel}}}[{RI}])))"


def ratio(num: str, den: str) -> str:
    """num/den that stays 0 (not empty) when the numerator has no series yet."""
    return f"({num} or {den} * 0) / {den}"


def dashboards() -> dict[str, dict[str, Any]]:
    req = f"aib_requests_total{{{RP}}}"
    dur = "aib_request_duration_seconds"
    ttft = "aib_time_to_first_token_seconds"
    overview = [
        stat("Requests / s", f"sum(rate({req}[{RI}]))", "reqps"),
        stat(
            "Errors (5xx)",
            ratio(f'sum(rate(aib_requests_total{{{RP}, status=~"5.."}}[{RI}]))', f"sum(rate({req}[{RI}]))"),
            "percentunit",
            thresholds=[(None, "green"), (0.01, "yellow"), (0.05, "red")],
        ),
        stat("Latency p95", quantile(0.95, dur), "s"),
        stat("TTFT p95 (streams)", quantile(0.95, ttft), "s"),
        stat(
            "Providers up",
            "sum(aib_provider_up) / count(aib_provider_up)",
            "percentunit",
            thresholds=[(None, "red"), (0.5, "yellow"), (1, "green")],
        ),
        stat("In flight", "sum(aib_inflight_requests)", "short"),
        ts("Requests / s by route", (f"sum by (route) (rate({req}[{RI}]))", "{{route}}"), unit="reqps"),
        ts("Requests / s by status", (f"sum by (status) (rate({req}[{RI}]))", "{{status}}"), unit="reqps"),
        ts(
            "Latency (all routes)",
            (quantile(0.5, dur), "p50"),
            (quantile(0.95, dur), "p95"),
            (quantile(0.99, dur), "p99"),
            unit="s",
        ),
        ts(
            "Tokens / s",
            (f"sum(rate(aib_prompt_tokens_total{{{RP}}}[{RI}]))", "prompt"),
            (f"sum(rate(aib_completion_tokens_total{{{RP}}}[{RI}]))", "completion"),
            unit="short",
        ),
        ts(
            "Gateway process CPU",
            (f"rate(process_cpu_seconds_total[{RI}]) {ONLY_GATEWAYS}", "{{instance}}"),
            unit="percentunit",
            w=8,
        ),
        ts(
            "Gateway process memory (RSS)",
            (f"process_resident_memory_bytes {ONLY_GATEWAYS}", "{{instance}}"),
            unit="bytes",
            w=8,
        ),
        Panel(
            "Config version",
            [q("aib_config_info", "{{version}}", instant=True)],
            "stat",
            "none",
            w=8,
            h=8,
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "name",
                "colorMode": "none",
            },
        ),
    ]
    latency = [
        ts(
            "Request duration p50 / p95 / p99",
            (quantile(0.5, dur), "p50"),
            (quantile(0.95, dur), "p95"),
            (quantile(0.99, dur), "p99"),
            unit="s",
        ),
        ts("Request duration p95 by route", (quantile(0.95, dur, "route"), "{{route}}"), unit="s"),
        ts(
            "Time to first token p50 / p95 / p99 (streams)",
            (quantile(0.5, ttft), "p50"),
            (quantile(0.95, ttft), "p95"),
            (quantile(0.99, ttft), "p99"),
            unit="s",
        ),
        ts("Time to first token p95 by route", (quantile(0.95, ttft, "route"), "{{route}}"), unit="s"),
        ts(
            "Mean duration by provider",
            (
                f"sum by (provider) (rate({dur}_sum{{{RP}}}[{RI}])) / sum by (provider) (rate({dur}_count{{{RP}}}[{RI}]))",
                "{{provider}}",
            ),
            unit="s",
        ),
        ts(
            "Gateway overhead (total minus upstream time)",
            (
                f"histogram_quantile(0.5, sum by (le) (rate(aib_gateway_overhead_seconds_bucket[{RI}])))",
                "p50",
            ),
            (
                f"histogram_quantile(0.99, sum by (le) (rate(aib_gateway_overhead_seconds_bucket[{RI}])))",
                "p99",
            ),
            unit="s",
            description="Time the gateway itself added to each request: parsing, routing, proxying.",
        ),
        Panel(
            "Request duration distribution",
            [{**q(f"sum by (le) (increase({dur}_bucket{{{RP}}}[{RI}]))", "{{le}}"), "format": "heatmap"}],
            "heatmap",
            "s",
            w=24,
            options={
                "calculate": False,
                "yAxis": {"unit": "s"},
                "cellGap": 1,
                "color": {"scheme": "Oranges", "mode": "scheme"},
            },
        ),
    ]
    providers = [
        Panel(
            "Provider health (last probe)",
            [q("aib_provider_up", "{{provider}}")],
            "state-timeline",
            "none",
            w=24,
            mappings=UP_MAPPING,
            thresholds=[(None, "red"), (1, "green")],
        ),
        ts("Health probe latency", ("aib_provider_probe_latency_seconds", "{{provider}}"), unit="s"),
        ts(
            "Requests / s by provider",
            (f"sum by (provider) (rate({req}[{RI}]))", "{{provider}}"),
            unit="reqps",
        ),
        ts(
            "Upstream attempts / s by outcome",
            (
                f"sum by (provider, outcome) (rate(aib_upstream_attempts_total{{{P}}}[{RI}]))",
                "{{provider}} {{outcome}}",
            ),
            unit="ops",
        ),
        ts(
            "Failed attempt ratio by provider",
            (
                ratio(
                    f'sum by (provider) (rate(aib_upstream_attempts_total{{{P}, outcome!~"ok|rejected"}}[{RI}]))',
                    f"sum by (provider) (rate(aib_upstream_attempts_total{{{P}}}[{RI}]))",
                ),
                "{{provider}}",
            ),
            unit="percentunit",
        ),
        Panel(
            "Circuit breakers",
            [q("aib_breaker_state", "{{deployment}}")],
            "state-timeline",
            "none",
            w=24,
            mappings=BREAKER_MAPPING,
            thresholds=[(None, "green"), (1, "yellow"), (2, "red")],
        ),
        ts("Latency p95 by provider", (quantile(0.95, dur, "provider"), "{{provider}}"), unit="s"),
        ts(
            "Time to first token p95 by provider",
            (quantile(0.95, ttft, "provider"), "{{provider}}"),
            unit="s",
        ),
    ]
    tokens = [
        stat(
            "Prompt tokens (range)", f"sum(increase(aib_prompt_tokens_total{{{RP}}}[$__range]))", "short", w=6
        ),
        stat(
            "Completion tokens (range)",
            f"sum(increase(aib_completion_tokens_total{{{RP}}}[$__range]))",
            "short",
            w=6,
        ),
        stat("Requests (range)", f"sum(increase({req}[$__range]))", "short", w=6),
        stat(
            "Streamed share",
            ratio(f"sum(rate({ttft}_count{{{RP}}}[{RI}]))", f"sum(rate({req}[{RI}]))"),
            "percentunit",
            w=6,
        ),
        ts(
            "Completion tokens / s by route",
            (f"sum by (route) (rate(aib_completion_tokens_total{{{RP}}}[{RI}]))", "{{route}}"),
        ),
        ts(
            "Prompt tokens / s by route",
            (f"sum by (route) (rate(aib_prompt_tokens_total{{{RP}}}[{RI}]))", "{{route}}"),
        ),
        ts(
            "Completion tokens per request by route",
            (
                f"sum by (route) (rate(aib_completion_tokens_total{{{RP}}}[{RI}])) / sum by (route) (rate({req}[{RI}]))",
                "{{route}}",
            ),
        ),
        ts(
            "Requests / s by endpoint",
            (f"sum by (endpoint) (rate({req}[{RI}]))", "{{endpoint}}"),
            unit="reqps",
        ),
        Panel(
            "Top routes by completion tokens (range)",
            [
                q(
                    f"topk(10, sum by (route) (increase(aib_completion_tokens_total{{{RP}}}[$__range])))",
                    "{{route}}",
                    instant=True,
                )
            ],
            "bargauge",
            "short",
            w=12,
            options={
                "orientation": "horizontal",
                "displayMode": "gradient",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
            },
        ),
        Panel(
            "Top providers by tokens (range)",
            [
                q(
                    f"topk(10, sum by (provider) (increase(aib_prompt_tokens_total{{{RP}}}[$__range]) "
                    f"+ increase(aib_completion_tokens_total{{{RP}}}[$__range])))",
                    "{{provider}}",
                    instant=True,
                )
            ],
            "bargauge",
            "short",
            w=12,
            options={
                "orientation": "horizontal",
                "displayMode": "gradient",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
            },
        ),
    ]
    errors = [
        stat(
            "Error ratio (5xx)",
            ratio(f'sum(rate(aib_requests_total{{{RP}, status=~"5.."}}[{RI}]))', f"sum(rate({req}[{RI}]))"),
            "percentunit",
            w=6,
            thresholds=[(None, "green"), (0.01, "yellow"), (0.05, "red")],
        ),
        stat(
            "Fallback ratio",
            ratio(f"sum(rate(aib_fallbacks_total{{{R}}}[{RI}]))", f"sum(rate({req}[{RI}]))"),
            "percentunit",
            w=6,
            thresholds=[(None, "green"), (0.05, "yellow"), (0.2, "red")],
        ),
        stat(
            "Reload failures (range)",
            'sum(increase(aib_config_reloads_total{result="failure"}[$__range]))',
            "short",
            w=6,
            thresholds=[(None, "green"), (1, "red")],
        ),
        stat(
            "Open breakers",
            "count(aib_breaker_state == 2) or vector(0)",
            "short",
            w=6,
            thresholds=[(None, "green"), (1, "red")],
        ),
        ts(
            "Error ratio (5xx) by route",
            (
                ratio(
                    f'sum by (route) (rate(aib_requests_total{{{RP}, status=~"5.."}}[{RI}]))',
                    f"sum by (route) (rate({req}[{RI}]))",
                ),
                "{{route}}",
            ),
            unit="percentunit",
        ),
        ts(
            "Non-2xx answers / s by status",
            (f'sum by (status) (rate(aib_requests_total{{{RP}, status!~"2.."}}[{RI}]))', "{{status}}"),
            unit="reqps",
        ),
        ts(
            "Fallbacks / s by route",
            (f"sum by (route) (rate(aib_fallbacks_total{{{R}}}[{RI}]))", "{{route}}"),
            unit="ops",
        ),
        ts(
            "Failed upstream attempts / s",
            (
                f'sum by (provider, outcome) (rate(aib_upstream_attempts_total{{{P}, outcome!~"ok|rejected"}}[{RI}]))',
                "{{provider}} {{outcome}}",
            ),
            unit="ops",
        ),
        ts(
            "Config reloads",
            ("sum by (result) (increase(aib_config_reloads_total[$__rate_interval]))", "{{result}}"),
            unit="short",
        ),
        ts(
            "Request log drops",
            ("sum by (reason) (increase(aib_request_log_dropped_total[$__rate_interval]))", "{{reason}}"),
            ("sum(aib_request_log_queue_depth)", "queued"),
            unit="short",
            description="Entries the request log dropped rather than slow requests down (queue full, disk full, locked).",
        ),
    ]
    return {
        "aib-overview": build(
            "aib-overview", "AIB / Overview", overview, "Traffic, errors, latency and health at a glance."
        ),
        "aib-latency": build(
            "aib-latency", "AIB / Latency and TTFT", latency, "Where the time goes, per route and provider."
        ),
        "aib-providers": build(
            "aib-providers", "AIB / Providers and Health", providers, "Health probes, breakers, attempts."
        ),
        "aib-tokens": build(
            "aib-tokens",
            "AIB / Tokens and Usage",
            tokens,
            "Token throughput and usage by route and provider.",
        ),
        "aib-errors": build(
            "aib-errors",
            "AIB / Errors, Fallbacks and Reloads",
            errors,
            "What failed, what fell back, what was reloaded.",
        ),
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def build(uid: str, title: str, panels: list[Panel], description: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    x = y = row_h = 0
    for i, p in enumerate(panels, 1):
        if x + p.w > 24:
            x, y, row_h = 0, y + row_h, 0
        defaults: dict[str, Any] = {"unit": p.unit, "custom": p.custom, "mappings": p.mappings}
        if p.thresholds is not None:
            steps = [{"color": c, "value": v} for v, c in p.thresholds]
            defaults["thresholds"] = {"mode": "absolute", "steps": steps}
            defaults["color"] = {"mode": "thresholds"}
        if p.decimals is not None:
            defaults["decimals"] = p.decimals
        if p.minimum is not None:
            defaults["min"] = p.minimum
        if p.maximum is not None:
            defaults["max"] = p.maximum
        targets = [{"refId": chr(ord("A") + j), "datasource": DS, **t} for j, t in enumerate(p.targets)]
        panel: dict[str, Any] = {
            "id": i,
            "type": p.kind,
            "title": p.title,
            "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": p.w, "h": p.h},
            "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": p.options
            or {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        }
        if p.description:
            panel["description"] = p.description
        out.append(panel)
        x += p.w
        row_h = max(row_h, p.h)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["aib", "ai-backend-unified"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                _variable("route", "Route", "label_values(aib_requests_total, route)"),
                _variable("provider", "Provider", "label_values(aib_requests_total, provider)"),
            ]
        },
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["aib"], "asDropdown": True, "title": "AIB dashboards"}],
        "panels": out,
    }


def render(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for uid, d in dashboards().items():
        path = OUT / f"{uid}.json"
        text = render(d)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale dashboards (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
