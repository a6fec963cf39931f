"""What every codec shares: errors that name the field, body checks, SSE framing, images, tool args.

Errors are :class:`aib.gateway.errors.GatewayError` in OpenAI's shape; each front door re-encodes them
in its own API's shape on the way out. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import orjson

from aib.gateway.errors import GatewayError

JsonObj = dict[str, Any]


def refuse(param: str, message: str, code: str = "unsupported_parameter") -> GatewayError:
    """400 naming ``param``: the request asks for something this translation cannot carry."""
    return GatewayError(400, f"{param}: {message}", "invalid_request_error", code, param)


def missing(param: str) -> GatewayError:
    return GatewayError(
        400,
        f"Missing required parameter: {param!r}.",
        "invalid_request_error",
        "missing_required_parameter",
        param,
    )


def wrong_type(param: str, expected: str) -> GatewayError:
    return GatewayError(400, f"{param!r} must be {expected}.", "invalid_request_error", "invalid_type", param)


def parse_object(body: bytes) -> JsonObj:
    """The request body as a JSON object (400 for an empty body, bad JSON or another JSON value)."""
    if not body.strip():
        raise GatewayError(
            400, "The request body is empty; send a JSON object.", "invalid_request_error", "invalid_json"
        )
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400, f"The request body is not valid JSON: {exc}", "invalid_request_error", "invalid_json"
        ) from None
    if not isinstance(obj, dict):
        raise GatewayError(
            400, "The request body must be a JSON object.", "invalid_request_error", "invalid_json"
        )
    return obj


def model_of(obj: JsonObj, param: str = "model") -> str:
    """The model asked for: a non-empty printable string (it ends up in a response header)."""
    model = obj.get(param)
    if model is None:
        raise missing(param)
    if not isinstance(model, str) or not model:
        raise wrong_type(param, "a non-empty string")
    if not model.isprintable():
        raise GatewayError(
            400,
            f"{param!r} must not contain control characters.",
            "invalid_request_error",
            "invalid_value",
            param,
        )
    return model


def flag(obj: JsonObj, param: str, default: bool) -> bool:
    value = obj.get(param)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise wrong_type(param, "a boolean")
    return value


def number(obj: JsonObj, param: str, where: str | None = None) -> float | int | None:
    value = obj.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(where or param, "a number")
    return value


def integer(obj: JsonObj, param: str, where: str | None = None, minimum: int | None = None) -> int | None:
    value = obj.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(where or param, "an integer")
    if minimum is not None and value < minimum:
        name = where or param
        raise GatewayError(
            400, f"{name!r} must be at least {minimum}.", "invalid_request_error", "invalid_value", name
        )
    return value


def str_list(value: Any, param: str) -> list[str]:
    """A string or a list of strings, as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise wrong_type(param, "a string or a list of strings")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --------------------------------------------------------------------------- SSE framing


def split_events(buf: bytes) -> tuple[list[bytes], bytes]:
    """The complete SSE events in ``buf`` (without their blank line) and the incomplete rest."""
    if b"\r" in buf:
        buf = buf.replace(b"\r\n", b"\n")
    parts = buf.split(b"\n\n")
    return parts[:-1], parts[-1]


def event_fields(event: bytes) -> tuple[bytes | None, bytes | None]:
    """(``event:`` name, joined ``data:`` lines) of one SSE event; comments and ids are skipped."""
    if event.startswith(b"data: ") and b"\n" not in event:  # the common case: one data line
        return None, event[6:]
    name: bytes | None = None
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, (b"\n".join(data) if data else None)


def sse(name: bytes, data: bytes) -> bytes:
    """One named SSE event."""
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


# --------------------------------------------------------------------------- images

_MAGIC = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


def sniff_image(b64: str) -> str:
    """The media type of a base64 image from its first bytes (JPEG when unknown)."""
    for magic, media in _MAGIC:
        if b64.startswith(magic):
            return media
    return "image/jpeg"


def data_uri(b64: str, media_type: str | None = None) -> str:
    return f"data:{media_type or sniff_image(b64)};base64,{b64}"


def parse_data_uri(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:<type>;base64,<data>`` URI; None for another URL."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[5:-7] or "application/octet-stream", data


def check_base64(data: str, param: str) -> str:
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(
            400, f"{param}: not valid base64 image data.", "invalid_request_error", "invalid_value", param
        ) from None
    return data


# --------------------------------------------------------------------------- tool calls


def args_object(arguments: Any) -> JsonObj:
    """Tool-call arguments (a JSON text, as OpenAI sends them) as an object. Arguments a model wrote
    that are not a JSON object are kept, as text, under ``_unparsed_arguments``."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        obj = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers past 64 bits; the standard library takes them
            obj = json.loads(arguments)
        except (ValueError, TypeError):
            return {"_unparsed_arguments": str(arguments)}
    except TypeError:
        return {"_unparsed_arguments": str(arguments)}
    return obj if isinstance(obj, dict) else {"_unparsed_arguments": str(arguments)}


def args_text(arguments: Any) -> str:
    """Tool-call arguments as OpenAI's JSON text (objects from Anthropic and Ollama are encoded)."""
    if isinstance(arguments, str):
        return arguments
    try:
        return orjson.dumps(arguments if arguments is not None else {}).decode()
    except TypeError:  # integers past 64 bits, or values JSON has no form for
        return json.dumps(arguments, separators=(",", ":"), ensure_ascii=False, default=str)


def content_text(content: Any) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a list, joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") in ("text", None)
        )
    return str(content)


def first_choice(completion: JsonObj) -> JsonObj:
    choices = completion.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def usage_counts(usage: Any) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens of an OpenAI ``usage`` object (0 when absent)."""
    if not isinstance(usage, dict):
        return 0, 0, 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return (
        _int(usage.get("prompt_tokens")),
        _int(usage.get("completion_tokens")),
        _int(cached),
    )


def _int(v: Any) -> int:
    return v if type(v) is int and v > 0 else 0


def sub(obj: Any, key: str) -> JsonObj:
    """``obj[key]`` when both are objects, else an empty dict."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def seq(obj: Any, key: str) -> list[Any]:
    """``obj[key]`` when it is a list, else an empty list."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def index_of(frag: JsonObj, default: int) -> int:
    """The ``index`` of a streamed tool-call fragment (``default`` when it has none)."""
    value = frag.get("index")
    return value if isinstance(value, int) else default
