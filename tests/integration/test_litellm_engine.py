"""The generated LiteLLM config, run by the real LiteLLM proxy (``aib serve --engine litellm``'s engine),
in front of the two real llama.cpp servers: the gateway's scenarios must behave the same way.

Exact names, aliases, patterns (with the upstream name checked on a scripted upstream), a load-balanced
group, a least-busy group (a LiteLLM routing group), a fallback chain from a dead port,
``capability/<x>``, streaming, ``/v1/completions`` and ``/v1/models``; driven with the official
``openai`` client. LiteLLM comes from ``make litellm`` (``.venv-litellm``) or ``$AIB_LITELLM_BIN``;
without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import OpenAI

from aib.devtools.llamacpp import LlamaCppServer, free_port
from aib.engines.litellm import LiteLLMEngine
from gateway_harness import ScriptedUpstream, dead_url, write_config
from litellm_support import require_litellm
from openai_support import PROMPT, assert_clean_sse, sdk_client, stream_chat
from openai_support import ask as sdk_ask

pytestmark = pytest.mark.integration

MAPPINGS = """
    defaults:
      timeouts: {connect_s: 2, first_byte_s: 60, total_s: 120}
      retries: {max_attempts: 3}
      breaker: {failure_threshold: 2, cooldown_s: 1}
    models:
      smollm-a: {provider: llama_a, upstream: smollm2, aliases: [tiny]}
      smollm-b: {provider: llama_b, upstream: smollm2}
      smollm:
        strategy: round_robin
        deployments:
          - {provider: llama_a, upstream: smollm2}
          - {provider: llama_b, upstream: smollm2}
      smollm-busy:
        strategy: least_outstanding
        deployments:
          - {provider: llama_a, upstream: smollm2}
          - {provider: llama_b, upstream: smollm2}
      smollm-chain:
        provider: llama_dead
        upstream: smollm2
        fallbacks: [smollm]
    patterns:
      - {match: "local/*", provider: llama_a}
      - {match: "hf/*/*", provider: scripted, upstream: "{1}/{2}"}
    capabilities:
      completion: {prefer: [smollm-b], only_preferred: true}
"""


@dataclass
class Proxy:
    base_url: str  # http://127.0.0.1:PORT
    a: LlamaCppServer
    b: LlamaCppServer
    scripted: ScriptedUpstream
    engine: LiteLLMEngine

    def client(self) -> OpenAI:
        return sdk_client(self.base_url + "/v1", timeout=120)


@pytest.fixture(scope="module")
def proxy(llama_servers: list[LlamaCppServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    require_litellm()
    a, b = llama_servers
    tmp = tmp_path_factory.mktemp("litellm-engine")
    with ScriptedUpstream(models=["org/model"]) as scripted:
        providers = f"""
            providers:
              llama_a:
                type: llamacpp
                base_url: {a.root_url}
                models: [{{name: smollm2, capabilities: [chat, completion]}}]
              llama_b:
                type: llamacpp
                base_url: {b.root_url}
                models: [{{name: smollm2, capabilities: [chat, completion]}}]
              llama_dead:
                type: llamacpp
                base_url: {dead_url()}
                models: [smollm2]
              scripted:
                type: openai_compatible
                base_url: {scripted.base_url}
                models: [org/model]
        """
        cfg = write_config(tmp / "cfg", providers, MAPPINGS)
        log = tmp / "litellm.log"
        engine = LiteLLMEngine(cfg, port=free_port(), log_path=log, max_start_failures=1)
        out: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: out.setdefault("code", engine.run()), daemon=True)
        thread.start()
        try:
            ready = engine.supervisor
            while not ready.ready_times:
                if not thread.is_alive() or ready.exits:
                    pytest.fail(f"LiteLLM did not start:\n{ready.log_tail(60)}")
                thread.join(0.1)
            yield Proxy(engine.base_url, a, b, scripted, engine)
        finally:
            engine.stop()
            thread.join(30)
        assert not thread.is_alive() and out.get("code") == 0


def ask(p: Proxy, model: str, max_tokens: int = 8) -> tuple[str, dict[str, str]]:
    return sdk_ask(p.client(), model, max_tokens)


def served_by(p: Proxy, headers: dict[str, str]) -> str:
    """Which llama.cpp server answered: LiteLLM names the deployment's api_base in a header."""
    base = headers["x-litellm-model-api-base"].rstrip("/")
    return {p.a.base_url: "llama_a", p.b.base_url: "llama_b"}.get(base, base)


@pytest.mark.parametrize(
    ("model", "server"), [("smollm-a", "llama_a"), ("tiny", "llama_a"), ("smollm-b", "llama_b")]
)
def test_exact_names_and_aliases(proxy: Proxy, model: str, server: str) -> None:
    text, headers = ask(proxy, model)
    assert text.strip()
    assert served_by(proxy, headers) == server
    assert headers["x-litellm-attempted-fallbacks"] == "0"


def test_pattern_routes_to_its_provider(proxy: Proxy) -> None:
    text, headers = ask(proxy, "local/smollm2")
    assert text.strip() and served_by(proxy, headers) == "llama_a"
    assert headers["x-litellm-model-id"] == "pattern-1@llama_a"


def test_pattern_fills_the_upstream_name(proxy: Proxy) -> None:
    proxy.scripted.clear()
    text, headers = ask(proxy, "hf/org/model")
    assert text == "Hello from the scripted upstream."
    assert headers["x-litellm-model-id"] == "pattern-2@scripted"
    assert [r.json["model"] for r in proxy.scripted.requests] == ["org/model"]
    assert proxy.scripted.requests[0].path == "/v1/chat/completions"


def test_load_balanced_group_uses_both_servers(proxy: Proxy) -> None:
    counts = Counter(served_by(proxy, ask(proxy, "smollm", max_tokens=1)[1]) for _ in range(16))
    assert set(counts) == {"llama_a", "llama_b"}, counts  # simple-shuffle: random, both get traffic
    ids = {ask(proxy, "smollm", max_tokens=1)[1]["x-litellm-model-id"] for _ in range(8)}
    assert ids <= {"smollm@llama_a/smollm2", "smollm@llama_b/smollm2"}


def test_least_busy_group_serves(proxy: Proxy) -> None:
    text, headers = ask(proxy, "smollm-busy")
    assert text.strip() and served_by(proxy, headers) in ("llama_a", "llama_b")


def test_fallback_chain_from_a_dead_port(proxy: Proxy) -> None:
    text, headers = ask(proxy, "smollm-chain")
    assert text.strip()
    assert served_by(proxy, headers) in ("llama_a", "llama_b")
    assert headers["x-litellm-attempted-fallbacks"] == "1"
    assert headers["x-litellm-model-id"].startswith("smollm@")  # the fallback route's deployment


def test_capability_name(proxy: Proxy) -> None:
    text, headers = ask(proxy, "capability/completion")
    assert text.strip() and served_by(proxy, headers) == "llama_b"


def test_streaming(proxy: Proxy) -> None:
    n, text, finish = stream_chat(proxy.client(), "smollm")
    assert n >= 3 and text.strip()
    assert finish in ("length", "stop")


def test_stream_bytes_end_with_done(proxy: Proxy) -> None:
    body = {"model": "smollm-b", "messages": PROMPT, "max_tokens": 8, "stream": True}
    assert_clean_sse(httpx.post(proxy.base_url + "/v1/chat/completions", json=body, timeout=120))


def test_completions(proxy: Proxy) -> None:
    raw = proxy.client().completions.with_raw_response.create(
        model="smollm-a", prompt="Once upon a time", max_tokens=8, temperature=0
    )
    assert raw.parse().choices[0].text.strip()
    assert served_by(proxy, dict(raw.headers)) == "llama_a"


def test_models_list(proxy: Proxy) -> None:
    ids = {m.id for m in proxy.client().models.list()}
    assert {"smollm-a", "smollm-b", "smollm", "smollm-busy", "smollm-chain", "tiny"} <= ids
    assert not any(i.startswith("capability/") for i in ids)  # hidden aliases


def test_unknown_model_is_an_error_not_a_hang(proxy: Proxy) -> None:
    r = httpx.post(
        proxy.base_url + "/v1/chat/completions",
        json={"model": "no-such-model", "messages": PROMPT},
        timeout=60,
    )
    assert r.status_code in (400, 404) and "error" in r.json()
