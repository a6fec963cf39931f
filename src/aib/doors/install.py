"""Every front door on the gateway's port: :func:`install_doors`, called when a Gateway is built.

========================================  ==================  ========================================
path                                      door                internal endpoint / handler
========================================  ==================  ========================================
POST /v1/messages                         anthropic           chat/completions
POST /v1/messages/count_tokens            anthropic           an estimate, no upstream call
POST /v1/responses, /responses            responses           chat/completions (or passed through)
POST /api/chat, /api/generate             ollama              chat/completions
POST /api/embed, /api/embeddings          ollama              embeddings
GET /api/tags, /api/ps, /api/version      ollama              Gateway.models_for
POST /api/show                            ollama              Gateway.models_for + the config
========================================  ==================  ========================================
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import orjson

from aib.codecs.anthropic import error_from_openai
from aib.doors import ollama_models
from aib.doors.anthropic import AnthropicDoor, count_tokens
from aib.doors.ollama import OllamaDoor
from aib.doors.responses import ResponsesDoor

if TYPE_CHECKING:
    from aib.gateway.app import Gateway, Handler

MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")


def install_doors(gw: Gateway) -> None:
    # errors the gateway gives before a door runs (a missing client key, an unknown path) in its shape
    gw.error_shapes += [
        ("/v1/messages", lambda status, err: orjson.dumps(error_from_openai(status, err))),
        ("/api/", lambda status, err: orjson.dumps({"error": str(err.get("message") or f"HTTP {status}")})),
    ]
    gw.add_door("/v1/messages", "chat/completions", AnthropicDoor())
    _route(gw, "/v1/messages/count_tokens", "POST", count_tokens)
    responses = ResponsesDoor()
    for path in ("/v1/responses", "/responses"):
        gw.add_door(path, "chat/completions", responses)
    for kind, endpoint in (("chat", "chat/completions"), ("generate", "chat/completions"), ("embed", "embeddings"), ("embeddings", "embeddings")):  # fmt: skip
        gw.add_door(f"/api/{kind}", endpoint, OllamaDoor(kind))
    _route(gw, "/api/tags", "GET", ollama_models.tags)
    _route(gw, "/api/ps", "GET", ollama_models.ps)
    _route(gw, "/api/version", "GET", ollama_models.version)
    _route(gw, "/api/show", "POST", ollama_models.show)
    for path in MANAGEMENT:
        _route(gw, path, "DELETE" if path == "/api/delete" else "POST", ollama_models.not_here)


def _route(gw: Gateway, path: str, method: str, handler: Handler) -> None:
    gw.add_route(path, method, functools.partial(handler, gw))
