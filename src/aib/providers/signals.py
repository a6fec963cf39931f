"""Where each provider kind reports its load, and how to read it (parsers only: no I/O, no clock).

* Ollama ``GET /api/ps`` ("List Running Models" in Ollama's API documentation):
  ``{"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": ..., "expires_at": ...,
  "size_vram": ...}]}``: the models in memory. Ollama reports no queue.
* llama.cpp ``llama-server`` ``GET /metrics`` (with ``--metrics``): Prometheus text with
  ``llamacpp:requests_processing`` and ``llamacpp:requests_deferred``; without ``--metrics`` it answers
  501 and ``GET /slots`` (on by default) lists the slots with ``is_processing``. llama-cpp-python's server
  has neither (404): it is then unsupported, and the strategies use the gateway's own counts.
* vLLM ``GET /metrics``: ``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` per
  ``model_name`` (summed over ``engine``), and ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc``
  before vLLM 0.10).

A body that is not what the kind sends raises :class:`ValueError` (the poll counts as failed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson

from aib.routing.signals import Reading, with_tag

# answers that mean "this server has no such endpoint" (as opposed to "it failed just now")
UNSUPPORTED_STATUSES = frozenset({404, 405, 501})

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def prometheus_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample line of a Prometheus text exposition."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"not a Prometheus sample line: {line[:80]!r}")
        try:
            value = float(m.group(3))
        except ValueError:
            raise ValueError(f"not a number in {line[:80]!r}") from None
        labels = dict(_LABEL.findall(m.group(2))) if m.group(2) else {}
        yield m.group(1), labels, value


class SignalSource:
    """One kind's signal endpoints, tried in order; the first that exists is used."""

    paths: ClassVar[tuple[str, ...]] = ()
    lists_loaded: ClassVar[bool] = False  # the server reports which models are in memory

    def parse(self, path: str, body: bytes) -> Reading:
        raise NotImplementedError


class OllamaSignals(SignalSource):
    paths: ClassVar[tuple[str, ...]] = ("/api/ps",)
    lists_loaded: ClassVar[bool] = True

    def parse(self, path: str, body: bytes) -> Reading:
        data = _json(body)
        if not isinstance(data, dict) or "models" not in data:
            raise ValueError("expected an object with a `models` list")
        models = data["models"] or []  # Go sends an empty list as null
        if not isinstance(models, list):
            raise ValueError("expected an object with a `models` list")
        names: set[str] = set()
        for m in models:
            if isinstance(m, dict):
                for k in ("name", "model"):
                    if isinstance(m.get(k), str):
                        names.update((m[k], with_tag(m[k])))  # "gemma3" is "gemma3:latest"
        return Reading(path, loaded=frozenset(names))


class LlamaCppSignals(SignalSource):
    paths: ClassVar[tuple[str, ...]] = ("/metrics", "/slots")

    def parse(self, path: str, body: bytes) -> Reading:
        if path == "/slots":
            slots = _json(body)
            if not isinstance(slots, list):
                raise ValueError("expected a list of slots")
            busy = sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing"))
            return Reading(path, running=float(busy), slots=len(slots))
        running = waiting = None
        for name, _labels, value in prometheus_samples(body.decode("utf-8", "replace")):
            if name == "llamacpp:requests_processing":
                running = value
            elif name == "llamacpp:requests_deferred":
                waiting = value
        if running is None:
            raise ValueError("no llamacpp:requests_processing in /metrics")
        return Reading(path, running=running, waiting=waiting)


class VllmSignals(SignalSource):
    paths: ClassVar[tuple[str, ...]] = ("/metrics",)
    _KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")

    def parse(self, path: str, body: bytes) -> Reading:
        per_model: dict[str, list[float]] = {}
        kv: float | None = None
        seen = False
        for name, labels, value in prometheus_samples(body.decode("utf-8", "replace")):
            if name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                seen = True
                acc = per_model.setdefault(labels.get("model_name", ""), [0.0, 0.0])
                acc[0 if name.endswith("running") else 1] += value
            elif name in self._KV:
                kv = value if kv is None else max(kv, value)  # several engines: the fullest
        if not seen:
            raise ValueError("no vllm:num_requests_running in /metrics")
        return Reading(
            path,
            running=sum(r for r, _ in per_model.values()),
            waiting=sum(w for _, w in per_model.values()),
            kv_cache=kv,
            per_model={m: (r, w) for m, (r, w) in per_model.items() if m},
        )


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
