"""Large answers through the gateway: passed on byte for byte, usage still recorded, garbage still caught.

Answers above ``proxy.FULL_PARSE_MAX`` are not parsed whole (a 50-input embeddings answer is ~1 MB and
costs ~5 ms of CPU to parse); these tests check that nothing a client or the request log sees changes.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from aib.gateway.proxy import FULL_PARSE_MAX
from gateway_harness import Reply, ScriptedUpstream, plan_from_yaml, running_gateway

pytestmark = pytest.mark.integration


def _embeddings(n: int) -> dict[str, object]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": [0.015625 * i] * 768, "index": i} for i in range(n)],
        "model": "embed",
        "usage": {"prompt_tokens": 7 * n, "total_tokens": 7 * n},
    }


def test_large_answers_pass_unchanged_with_usage_and_garbage_falls_back(tmp_path: Path) -> None:
    with ScriptedUpstream() as first, ScriptedUpstream() as second:
        plan = plan_from_yaml(
            tmp_path,
            f"""
            providers:
              first: {{type: vllm, base_url: "{first.base_url}", models: [embed]}}
              second: {{type: vllm, base_url: "{second.base_url}", models: [embed]}}
            """,
            """
            models:
              embed:
                deployments: [{provider: first, upstream: embed}, {provider: second, upstream: embed}]
                strategy: round_robin
                max_attempts: 2
            """,
        )
        with running_gateway(plan) as gw, httpx.Client(base_url=gw.base_url, timeout=30) as client:
            big = orjson.dumps(_embeddings(40))
            assert len(big) > 10 * FULL_PARSE_MAX
            first.enqueue(Reply(status=200, body=big))
            r = client.post("/v1/embeddings", json={"model": "embed", "input": ["x"] * 40})
            assert r.status_code == 200 and r.content == big  # byte for byte
            rec = gw.observer.wait_for(r.headers["x-request-id"])
            assert rec.prompt_tokens == 280 and rec.status == 200

            # a large answer that is not a JSON object is an unusable answer: the next deployment answers
            garbage = b"<html>" + b"x" * (2 * FULL_PARSE_MAX) + b"</html>"
            second.enqueue(Reply(status=200, body=garbage, headers={"content-type": "application/json"}))
            first.enqueue(Reply(status=200, body=big))
            r = client.post("/v1/embeddings", json={"model": "embed", "input": ["x"] * 40})
            assert r.status_code == 200 and r.content == big
            assert r.headers["x-aib-fallbacks"] == "1" and r.headers["x-aib-provider"] == "first"
