"""Secrets never leave: an upstream that echoes its provider key back (in a 4xx body, a 5xx body, a
health or model-list answer, a stream's error event) never gets it to a client, ``/health``, a log
line or the metrics. Real gateway, real server, a scripted upstream that echoes.
"""

from __future__ import annotations

import io
import logging
import secrets
from pathlib import Path

import httpx
import orjson
import pytest

from aib.secrets import install_log_filter
from gateway_harness import (
    Reply,
    ScriptedUpstream,
    chat_chunk,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    sse_event,
)
from openai_support import PROMPT

pytestmark = pytest.mark.integration

KEY_ENV = "AIB_TEST_ECHO_KEY"
ADMIN_ENV = "AIB_TEST_ECHO_ADMIN"
MAPPINGS = """
    models:
      m: {provider: echo}
"""


def test_an_upstream_that_echoes_its_key_never_gets_it_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-proj-" + secrets.token_urlsafe(24)
    admin = "adm-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv(ADMIN_ENV, admin)
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    texts: list[str] = []
    try:
        with ScriptedUpstream(models=["m"]) as up:
            providers = f"""
            providers:
              echo:
                type: openai
                base_url: "{up.base_url}"
                api_key_env: {KEY_ENV}
                discovery: true
                models: [m]
                health: {{interval_s: 3600}}
            """
            plan = plan_from_yaml(tmp_path / "config", providers, MAPPINGS)
            settings = gateway_settings(health_checks=True, admin_key_env=ADMIN_ENV)
            with running_gateway(plan, settings) as rg:
                install_log_filter(rg.gateway.scrubber)
                rg.wait_first_probe()
                admin_h = {"authorization": f"Bearer {admin}"}
                # a health / model-list answer that echoes the key: a model id, then an error
                up.models_body = orjson.dumps(
                    {"object": "list", "data": [{"id": "m"}, {"id": f"model-{key}"}]}
                )
                rg.probe_now()
                with httpx.Client(base_url=rg.base_url, timeout=10) as h:
                    texts.append(h.get("/health", headers=admin_h).text)
                    texts.append(h.get("/v1/models").text)
                    assert "model-***" in texts[-1]  # discovered, under its masked name
                    up.models_body = orjson.dumps(
                        {"error": {"message": f"Incorrect API key provided: {key}"}}
                    )
                    up.probe_status = 401
                    rg.probe_now()
                    health = h.get("/health", headers=admin_h)
                    texts.append(health.text)
                    assert "Incorrect API key provided: ***" in health.text
                    up.models_body, up.probe_status = None, 200
                    # a 4xx passed through, a 5xx reported, a stream's error event
                    up.enqueue(
                        Reply.error(401, f"Incorrect API key provided: {key}"),
                        Reply.error(500, f"auth backend: Bearer {key} expired"),
                        Reply(
                            content_type="text/event-stream",
                            chunks=(
                                chat_chunk("Hi"),
                                sse_event(
                                    {"error": {"message": f"upstream rejected key {key}", "type": "auth"}}
                                ),
                                b"data: [DONE]\n\n",
                            ),
                        ),
                    )
                    r401 = h.post("/v1/chat/completions", json={"model": "m", "messages": PROMPT})
                    assert r401.status_code == 401 and "***" in r401.text
                    r502 = h.post("/v1/chat/completions", json={"model": "m", "messages": PROMPT})
                    assert r502.status_code == 502 and "***" in r502.text
                    stream = h.post(
                        "/v1/chat/completions", json={"model": "m", "messages": PROMPT, "stream": True}
                    )
                    assert stream.status_code == 200, stream.text
                    assert "upstream rejected key ***" in stream.text
                    texts += [r401.text, r502.text, stream.text, str(r401.headers), str(stream.headers)]
                    texts.append(h.get("/metrics", headers=admin_h).text)
                    texts.append(h.get(f"/v1/models/model-{key}").text)  # asking with the key in the name
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    logs = out.getvalue()
    assert "provider echo is down" in logs  # the warning is there, masked
    for text in [*texts, logs]:
        assert key not in text
        assert admin not in text
