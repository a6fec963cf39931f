"""Helpers for the observability tests (not a test module): records, a duck-typed gateway, tools."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aib.config.plan import RoutingPlan
from aib.observe.records import Attempt, RequestRecord
from aib.routing.state import RuntimeState
from gateway_harness import plan_from_yaml

PROVIDERS = """
version: 1
providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:9
    models:
      - name: llama3
        capabilities: [chat]
      - name: coder
        capabilities: [chat, code]
  vllm:
    type: vllm
    base_url: http://127.0.0.1:10
    api_key_env: AIB_TEST_VLLM_KEY
    models: [big]
"""
MAPPINGS = """
version: 1
models:
  llama3: {provider: ollama, aliases: [default]}
  coder: {provider: ollama}
  big: {provider: vllm, fallbacks: [llama3]}
patterns:
  - match: "ollama/*"
    provider: ollama
    upstream: "{1}"
capabilities:
  code:
    prefer: [coder]
"""


def small_plan(tmp_path: Path) -> RoutingPlan:
    plan, _ = plan_from_yaml(tmp_path / "config", PROVIDERS, MAPPINGS)
    return plan


@dataclass
class FakeGateway:
    """What the observe layer reads from a gateway, and the hooks it writes to."""

    plan: Any
    state: RuntimeState = field(default_factory=RuntimeState)
    inflight: int = 0
    observers: list[Any] = field(default_factory=list)
    routes: dict[tuple[str, str], Any] = field(default_factory=dict)
    on_shutdown: list[Any] = field(default_factory=list)
    on_reload: list[Any] = field(default_factory=list)
    keep_bodies: bool = False
    settings: Any = None

    def add_route(self, path: str, method: str, handler: Any) -> None:
        self.routes[(path, method)] = handler


def make_record(
    model: str = "llama3",
    *,
    route: str | None = "llama3",
    matched_by: str | None = "exact",
    rule: str | None = None,
    provider: str | None = "ollama",
    upstream: str | None = None,
    status: int = 200,
    stream: bool = False,
    total_s: float = 0.25,
    upstream_s: float = 0.2,
    ttfb_s: float | None = 0.1,
    prompt_tokens: int | None = 12,
    completion_tokens: int | None = 30,
    attempts: list[Attempt] | None = None,
    started_at: float | None = None,
    request_id: str | None = None,
    endpoint: str = "chat/completions",
    **extra: Any,
) -> RequestRecord:
    rec = RequestRecord(
        request_id=request_id or os.urandom(8).hex(),
        endpoint=endpoint,
        model=model,
        started_at=started_at if started_at is not None else time.time(),
        stream=stream,
        route=route,
        matched_by=matched_by,
        rule=rule if rule is not None else (f"model {route!r}" if route else None),
        provider=provider,
        upstream=upstream if upstream is not None else (model if provider else None),
        status=status,
        ttfb_s=ttfb_s,
        total_s=total_s,
        upstream_s=upstream_s,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        plan_version="v1",
        **extra,
    )
    if attempts is None and provider is not None:
        attempts = [
            Attempt(
                f"{provider}/{rec.upstream}",
                provider,
                rec.upstream or "",
                route or "",
                status,
                None,
                ttfb_s,
                upstream_s,
                True,
            )
        ]
    rec.attempts = attempts or []
    return rec


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip the test without it (fail in CI, where it must be installed)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install prometheus provides prometheus and promtool)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
