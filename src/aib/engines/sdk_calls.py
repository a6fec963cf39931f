"""What the LiteLLM SDK adapter does around one LiteLLM call: which request fields go in, how an SDK
exception becomes an OpenAI error envelope, how a stream chunk becomes an SSE event.

Runs inside the adapter process (standard library and ``orjson`` only; ``litellm`` is passed in, never
imported here). Error statuses are chosen so the gateway's fallback and breaker work unchanged: a
request the upstream judged bad keeps its 4xx (passed to the client as is: 400, 401, 403, 404, 422), a
rate limit stays 429 with ``Retry-After``, and anything that says "try elsewhere" is 5xx (an overloaded
upstream 503, a timeout 504, an unreachable or failing upstream 502).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

from aib.config.litellm_sdk import SdkOptions

# The OpenAI request fields passed on to LiteLLM, per endpoint. Anything else is refused with a 400:
# LiteLLM takes many more keyword arguments (api_base, api_key, mock_response, ...), and a request must
# never be able to point the SDK, with this provider's key, somewhere else.
_SAMPLING = {"temperature", "top_p", "n", "stop", "max_tokens", "presence_penalty", "frequency_penalty"}
_COMMON = {"stream", "stream_options", "user", "seed", "logit_bias", "logprobs"}
ALLOWED: dict[str, frozenset[str]] = {
    "chat/completions": frozenset(
        _SAMPLING
        | _COMMON
        | {
            "messages",
            "max_completion_tokens",
            "top_logprobs",
            "response_format",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "functions",
            "function_call",
            "reasoning_effort",
            "modalities",
            "audio",
            "prediction",
            "service_tier",
            "web_search_options",
            "top_k",
            "thinking",
        }
    ),
    "completions": frozenset(_SAMPLING | _COMMON | {"prompt", "best_of", "echo", "suffix"}),
    "embeddings": frozenset({"input", "dimensions", "encoding_format", "user"}),
}
REQUIRED = {"chat/completions": "messages", "completions": "prompt", "embeddings": "input"}
_PREFIX = re.compile(r"^(?:litellm\.)?[A-Za-z]+(?:Error|Exception|Timeout)?:\s*")
_URL_KEY = re.compile(r"((?:key|api_key|token)=)[^&\s\"']+", re.IGNORECASE)


class AdapterError(Exception):
    """An answer in the OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.retry_after = retry_after

    def body(self) -> bytes:
        err = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": err})

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", self.retry_after.encode())] if self.retry_after else []


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without any of ``secrets`` (and without ``key=...`` URL parameters)."""
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    return _URL_KEY.sub(r"\1[redacted]", text)


def build_kwargs(endpoint: str, body: Mapping[str, Any], opts: SdkOptions, key: str | None) -> dict[str, Any]:
    """The keyword arguments of the LiteLLM call for one request, or :class:`AdapterError` (400/401/404)."""
    allowed = ALLOWED[endpoint]
    unknown = sorted(k for k in body if k not in allowed and k != "model")
    if unknown:
        raise AdapterError(
            400,
            f"{opts.provider}: the LiteLLM SDK adapter does not take {', '.join(map(repr, unknown))} "
            f"on /{endpoint} (it takes: {', '.join(sorted(allowed))})",
            "invalid_request_error",
            "unsupported_parameter",
            unknown[0],
        )
    name = body.get("model")
    field = REQUIRED[endpoint]
    if not isinstance(name, str) or not name or field not in body:
        missing = "model" if not isinstance(name, str) or not name else field
        raise AdapterError(
            400,
            f"Missing required parameter: {missing!r}.",
            "invalid_request_error",
            "missing_required_parameter",
        )
    model = opts.litellm_model(name)
    if model is None:
        raise AdapterError(
            404,
            f"{opts.provider}: no LiteLLM model for {name!r} (litellm_model maps: "
            f"{', '.join(opts.listed_models())})",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    if opts.api_key_env and not key:
        raise AdapterError(
            401,
            f"{opts.provider}: no API key: the environment variable {opts.api_key_env} is not set where "
            "the gateway runs (providers.yaml api_key_env)",
            "authentication_error",
            "missing_api_key",
        )
    kwargs = {k: v for k, v in body.items() if k in allowed}
    kwargs.update(opts.params)
    kwargs.update(model=model, timeout=opts.timeout_s, num_retries=0)  # fallback is the gateway's job
    if endpoint != "embeddings":
        kwargs["drop_params"] = opts.drop_params
    if key:
        kwargs["api_key"] = key
    if opts.api_base:
        kwargs["api_base"] = opts.api_base
    return kwargs


def _upstream_message(text: str) -> str:
    """LiteLLM's message without its class prefix; the upstream's own error message when one is inside."""
    text = _PREFIX.sub("", text.strip(), count=1)
    start = text.find("{")
    if start >= 0:
        try:  # the JSON may be followed by other text (LiteLLM sometimes shows the body as b'...')
            doc, _ = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            doc = None
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            kind = err.get("type")
            return f"{kind}: {err['message']}" if isinstance(kind, str) and kind else err["message"]
    return text


def _retry_after(exc: BaseException) -> str | None:
    for headers in (
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        try:
            value = headers.get("retry-after") if headers is not None else None
        except AttributeError:
            value = None
        if value:
            return str(value).strip()
    return None


def error_from_exception(exc: BaseException, opts: SdkOptions, secrets: tuple[str, ...]) -> AdapterError:
    """The envelope for an exception of a LiteLLM call (LiteLLM's exceptions carry ``status_code``)."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    raw = _upstream_message(str(exc)) or name
    message = scrub(f"{opts.provider} ({name}): {raw}", secrets)[:1000]
    retry_after = _retry_after(exc)
    if name == "Timeout" or status in (408, 504):
        return AdapterError(504, message, "timeout", "upstream_timeout")
    if name == "APIConnectionError":
        return AdapterError(502, message, "upstream_error", "upstream_unreachable")
    if status == 429:
        return AdapterError(429, message, "rate_limit_error", "rate_limit_exceeded", retry_after=retry_after)
    if status == 503 or status == 529 or "overloaded" in raw.lower():
        return AdapterError(
            503, message, "service_unavailable", "upstream_overloaded", retry_after=retry_after
        )
    if status == 401:
        return AdapterError(401, message, "authentication_error", "invalid_api_key")
    if status == 403:
        return AdapterError(403, message, "permission_error", "permission_denied")
    if status == 404:
        return AdapterError(404, message, "invalid_request_error", "model_not_found")
    if isinstance(status, int) and 400 <= status < 500:
        code = {"ContextWindowExceededError": "context_length_exceeded"}.get(name, "invalid_request")
        if name == "ContentPolicyViolationError":
            code = "content_policy_violation"
        return AdapterError(status, message, "invalid_request_error", code)
    if isinstance(status, int) and status >= 500:
        return AdapterError(502, message, "upstream_error", "upstream_error")
    return AdapterError(500, message, "server_error", "adapter_error")


def dump(obj: Any) -> dict[str, Any]:
    """A LiteLLM response object (pydantic) as plain JSON data."""
    data = obj.model_dump(mode="json", exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)
    return data if isinstance(data, dict) else {"data": data}


def sse_event(chunk: Any) -> bytes:
    """One stream chunk as an SSE ``data:`` event. The usage chunk LiteLLM sends with an empty delta gets
    ``choices: []``, as OpenAI sends it (the gateway drops it when the client did not ask for usage)."""
    data = dump(chunk)
    choices = data.get("choices")
    if data.get("usage") and isinstance(choices, list):
        empty = all(
            isinstance(c, dict) and not c.get("delta") and not c.get("finish_reason") and not c.get("text")
            for c in choices
        )
        if empty:
            data["choices"] = []
    return b"data: " + orjson.dumps(data) + b"\n\n"
