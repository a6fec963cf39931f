"""What the request path reports, once per request, to whoever observes it.

The gateway builds one :class:`RequestRecord` per request and hands it to every :class:`Observer`
after the response is finished (metrics, logs and the request log live in ``aib.observe`` and never
import the gateway). Observers must not block: they queue work and return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class Attempt:
    target: str  # deployment id "provider/upstream"
    provider: str
    upstream: str
    route: str
    status: int | None = None  # upstream HTTP status, None when no answer
    error: str | None = None
    ttfb_s: float | None = None
    duration_s: float = 0.0
    ok: bool = False


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    endpoint: str  # chat/completions, completions, embeddings
    model: str  # as the client asked
    started_at: float  # wall clock
    stream: bool = False
    route: str | None = None  # the route that matched (group name), None when unresolved
    matched_by: str | None = None
    rule: str | None = None
    provider: str | None = None  # the provider that answered
    upstream: str | None = None
    status: int = 0  # status sent to the client
    error: str | None = None
    error_code: str | None = None
    ttfb_s: float | None = None  # request start -> first byte sent to the client
    total_s: float = 0.0
    upstream_s: float = 0.0  # time spent waiting on upstreams (all attempts)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    client_disconnected: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    plan_version: str | None = None
    request_body: bytes | None = None  # only kept when body logging is on
    response_body: bytes | None = None
    key_name: str | None = None  # the client key's name (auth.mode keys); never the key itself
    door: str = "openai"  # the API the client spoke: openai, anthropic, ollama, responses (aib.doors)
    prompt_truncated: bool = False  # an Ollama upstream cut the prompt to fit its context (num_ctx)
    cache: str | None = None  # hit, miss, bypass, error (aib.cache.stage); None: the route does not cache
    cache_lookup_s: float | None = None  # time the cache lookup took (memory or Redis)

    @property
    def fallbacks(self) -> int:
        """Attempts that failed before the one that answered (or all, when none did)."""
        return sum(1 for a in self.attempts if not a.ok)

    @property
    def overhead_s(self) -> float:
        return max(self.total_s - self.upstream_s, 0.0)


class Observer(Protocol):
    def request_done(self, record: RequestRecord) -> None: ...
