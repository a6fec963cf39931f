"""Ollama's model endpoints, answered from :meth:`Gateway.models_for` (the names this client may use):
``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``, ``GET /api/version``; model management
(``/api/pull``, ``/api/push``, ``/api/create``, ``/api/copy``, ``/api/delete``) answers 501 in
Ollama's error shape: models are managed on the servers behind the gateway.

A gateway has no model files: sizes are 0, the digest is the SHA-256 of the name, ``modified_at`` is
when the gateway started, and ``/api/show`` reports the context length and capabilities from the
config. ``/api/ps`` lists the models with a deployment that is up now (the gateway cannot see what an
upstream keeps in memory).
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson

from aib.codecs.common import JsonObj, parse_object
from aib.doors.base import Scope, Send
from aib.gateway.errors import GatewayError

if TYPE_CHECKING:
    from aib.gateway.app import Gateway, Receive

API_VERSION = "0.12.0"  # the Ollama API level this door speaks (what clients compare features against)
# config capabilities -> Ollama's
CAPABILITIES = {"chat": "completion", "completion": "completion", "tools": "tools", "vision": "vision", "embeddings": "embedding", "reasoning": "thinking"}  # fmt: skip
DETAILS = {"parent_model": "", "format": "", "family": "", "families": None, "parameter_size": "", "quantization_level": ""}  # fmt: skip


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _entry(name: str, modified: str) -> JsonObj:
    return {
        "name": name,
        "model": name,
        "modified_at": modified,
        "size": 0,
        "digest": _digest(name),
        "details": dict(DETAILS),
    }


def model_facts(gw: Gateway, name: str) -> tuple[list[str], int | None]:
    """(Ollama capabilities, context length) of a model name from the plan and the config."""
    res = gw.plan.resolve(name)
    if res is None:
        return ["completion"], None
    caps = list(dict.fromkeys(CAPABILITIES[c] for c in res.group.capabilities if c in CAPABILITIES)) or [
        "completion"
    ]
    context = None
    for t in res.group.targets:
        info = gw.plan.providers.get(t.provider)
        settings = info.model_settings.get(t.upstream) if info is not None else None
        if settings is not None and settings.context_length:
            context = settings.context_length if context is None else min(context, settings.context_length)
    return caps, context


async def _ok(send: Send, obj: Any) -> None:
    from aib.gateway.app import send_json

    await send_json(send, 200, orjson.dumps(obj))


async def _error(send: Send, status: int, message: str) -> None:
    from aib.gateway.app import send_json

    await send_json(send, status, orjson.dumps({"error": message}))


async def tags(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    modified = _iso(gw.state.started_at)
    await _ok(send, {"models": [_entry(m, modified) for m, _ in gw.models_for(scope)]})


async def ps(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    expires = _iso(time.time() + 300)
    models = []
    for name, _ in gw.models_for(scope):
        res = gw.plan.resolve(name)
        if res is None or not any(_up(gw, t.provider) for t in res.group.targets):
            continue
        _, context = model_facts(gw, name)
        entry = _entry(name, expires)
        del entry["modified_at"]
        models.append({**entry, "expires_at": expires, "size_vram": 0, "context_length": context or 0})
    await _ok(send, {"models": models})


def _up(gw: Gateway, provider: str) -> bool:
    h = gw.state.health.get(provider)
    return h is None or h.usable


async def version(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    await _ok(send, {"version": API_VERSION})


async def show(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    from aib.gateway.app import read_body

    try:
        body = parse_object(await read_body(scope, receive, gw.settings.max_body_bytes))
    except GatewayError as err:
        await _error(send, err.status, err.message)
        return
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        await _error(send, 400, "model is required")
        return
    if name not in {m for m, _ in gw.models_for(scope)}:
        await _error(send, 404, f"model '{name}' not found")
        return
    caps, context = model_facts(gw, name)
    info: JsonObj = {"general.architecture": "aib"}
    if context:
        info["aib.context_length"] = context
    await _ok(
        send,
        {
            "modelfile": f"# served by ai-backend-unified\nFROM {name}\n",
            "parameters": f"num_ctx {context}" if context else "",
            "template": "",
            "details": dict(DETAILS),
            "model_info": info,
            "capabilities": caps,
            "modified_at": _iso(gw.state.started_at),
        },
    )


async def not_here(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    await _error(
        send,
        501,
        f"{scope['path']} is not available through the gateway: manage models on the Ollama server itself "
        "(e.g. `ollama pull` there); the gateway lists what its config routes.",
    )
