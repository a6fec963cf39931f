"""prefix_affinity: the same conversation to the same deployment, by consistent hashing with bounded load.

A request's key is, in this order: the ``x-session-id`` header, the body's ``user`` field, or a stable
prefix of the conversation (chat: the leading system/developer messages and the first user message;
completions: the first 1,024 characters of the prompt). Every later turn of a chat carries the same
prefix, so it hashes to the same deployment, whose server still has that prefix in its KV cache.

Bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018): with
``n`` eligible deployments and a total load ``L`` (:func:`aib.routing.load.load`, backend signals
included), a deployment takes the request only while its load is below
``ceil((1 + epsilon) * (L + 1) / n)``; otherwise the request goes on to the next deployment the key
meets on the ring. No deployment then carries much more than the mean, and a hot conversation spills
over instead of queueing. A deployment that is down or whose breaker is open is skipped on the ring,
so only its own conversations move, and they come back when it does.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from aib.config.plan import Group, Target
from aib.routing.load import load
from aib.routing.ring import Ring
from aib.routing.state import RuntimeState

PROMPT_PREFIX_CHARS = 1024  # completions: how much of the prompt is the conversation's key
MAX_SESSION_CHARS = 256  # longer x-session-id or `user` values are hashed like any other
_RINGS_MAX = 1024  # cached rings (one per distinct deployment set; bounded by the config anyway)

Then = Callable[[list[Target]], list[Target]]


class AffinityKey:
    """The key of one request, computed on first use (only routes with prefix_affinity need it)."""

    __slots__ = ("_done", "_value", "endpoint", "payload", "session")

    def __init__(self, endpoint: str, payload: Mapping[str, Any], session: str | None = None) -> None:
        self.endpoint = endpoint
        self.payload = payload
        self.session = session
        self._value: bytes | None = None
        self._done = False

    @property
    def value(self) -> bytes | None:
        if not self._done:
            self._value = request_key(self.endpoint, self.payload, self.session)
            self._done = True
        return self._value

    @property
    def source(self) -> str:
        """Where the key came from: session, user, prefix or none."""
        v = self.value
        return {b"s": "session", b"u": "user", b"p": "prefix"}.get(v[:1], "none") if v else "none"


def request_key(endpoint: str, payload: Mapping[str, Any], session: str | None = None) -> bytes | None:
    """The affinity key of a request (see the module doc); None when it has none."""
    if session:
        return b"s:" + session[:MAX_SESSION_CHARS].encode("utf-8", "replace")
    user = payload.get("user")
    if isinstance(user, str) and user:
        return b"u:" + user[:MAX_SESSION_CHARS].encode("utf-8", "replace")
    if endpoint == "chat/completions":
        prefix = chat_prefix(payload.get("messages"))
        if prefix:
            return b"p:" + hashlib.blake2b(orjson.dumps(prefix), digest_size=16).digest()
    elif endpoint == "completions":
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            text = prompt[:PROMPT_PREFIX_CHARS].encode("utf-8", "replace")
            return b"p:" + hashlib.blake2b(text, digest_size=16).digest()
    return None


def chat_prefix(messages: object) -> list[Any]:
    """The leading system/developer messages and the first user message: [role, content] pairs."""
    if not isinstance(messages, list):
        return []
    out: list[Any] = []
    for m in messages:
        if not isinstance(m, dict):
            break
        role = m.get("role")
        out.append([role, m.get("content")])
        if role not in ("system", "developer"):
            break  # the first turn of the conversation itself ends the prefix
    return out


def ring_for(group: Group, state: RuntimeState) -> Ring:
    ring = state.rings.get(group.targets)
    if ring is None:
        if len(state.rings) >= _RINGS_MAX:
            state.rings.clear()
        ring = state.rings[group.targets] = Ring(
            [t.id for t in group.targets], [t.weight for t in group.targets]
        )
    return ring


def walk(group: Group, ts: list[Target], state: RuntimeState, key: bytes) -> list[Target]:
    """The eligible deployments ``ts`` in the order ``key`` meets them on the group's ring."""
    ring = ring_for(group, state)
    ok = {t.id for t in ts}
    return [group.targets[i] for i in ring.walk(key) if group.targets[i].id in ok]


def capacity(loads: list[float], epsilon: float) -> int:
    """The bounded-load limit for the next request: ceil((1 + epsilon) * (sum + 1) / n)."""
    return max(math.ceil((1.0 + epsilon) * (sum(loads) + 1.0) / len(loads)), 1)


def prefix_affinity(
    group: Group,
    ts: list[Target],
    state: RuntimeState,
    now: float,
    key: AffinityKey | None,
    then: Then,
) -> list[Target]:
    """``ts`` ordered for this request: the first deployment on the ring with room, then the rest in
    ring order. Without a key, ``then`` (the route's tie_break strategy) orders them."""
    k = key.value if key is not None else None
    if k is None:
        return then(ts)
    order = walk(group, ts, state, k)
    loads = [load(state, t, now) for t in order]
    cap = capacity(loads, group.balance.affinity_epsilon)
    for i, t in enumerate(order):
        if loads[i] < cap:  # the least loaded always qualifies: it is at most the mean, below cap
            return [t, *order[:i], *order[i + 1 :]] if i else order
    return order  # not reached (see above); keeps the order total if loads change underneath


def explain(group: Group, ts: list[Target], state: RuntimeState, now: float, key: bytes) -> dict[str, object]:
    """Where ``key`` goes and why, for ``GET /admin/route?session=...`` (no state is changed)."""
    order = walk(group, ts, state, key)
    loads = [load(state, t, now) for t in order]
    cap = capacity(loads, group.balance.affinity_epsilon) if order else 0
    chosen = next((t.id for t, x in zip(order, loads, strict=True) if x < cap), None)
    return {
        "ring_order": [t.id for t in order],
        "loads": [round(x, 3) for x in loads],
        "capacity": cap,
        "home": order[0].id if order else None,
        "chosen": chosen,
        "spilled": chosen is not None and bool(order) and chosen != order[0].id,
    }
