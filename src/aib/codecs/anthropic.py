"""Anthropic Messages <-> OpenAI chat, both ways (requests, answers, errors); streams are in
:mod:`aib.codecs.anthropic_stream`.

The front door uses :func:`request_to_openai`, :func:`message_from_completion` and
:func:`error_from_openai`; the outbound adapter for ``type: anthropic`` providers uses
:func:`request_from_openai`, :func:`completion_from_message` and :func:`error_to_openai`.

What a translation cannot carry is refused with a 400 naming the field. Fields of a Messages request
that only Anthropic itself understands (server tools, documents, ``container``, ...) are not errors
at once: they come back as *problems*, refused only when the request is routed to an upstream that
does not speak the Messages API (an Anthropic upstream gets the request as it was sent).
"""

from __future__ import annotations

from typing import Any

from aib.codecs.common import (
    JsonObj,
    args_object,
    args_text,
    check_base64,
    content_text,
    first_choice,
    integer,
    missing,
    model_of,
    number,
    parse_data_uri,
    refuse,
    seq,
    str_list,
    sub,
    usage_counts,
    wrong_type,
)
from aib.gateway.errors import GatewayError

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; an OpenAI request may leave it out

# OpenAI finish_reason -> Anthropic stop_reason, and back
STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
FINISH_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# HTTP status -> Anthropic error type (its documented errors); other statuses map by class
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUS_OF_TYPE = {v: k for k, v in ERROR_TYPES.items() if k != 503}

# request fields the translation understands; any other is a problem for non-Anthropic upstreams
KNOWN = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
    }
)
ONLY_ANTHROPIC = "is only understood by an Anthropic upstream, and this request was routed elsewhere"


# --------------------------------------------------------------------------- requests: Anthropic -> OpenAI


def request_to_openai(body: JsonObj) -> tuple[JsonObj, list[GatewayError]]:
    """A Messages request as an OpenAI chat request, and the problems only Anthropic could serve."""
    problems: list[GatewayError] = [refuse(k, ONLY_ANTHROPIC) for k in body if k not in KNOWN]
    model = model_of(body)
    max_tokens = integer(body, "max_tokens", minimum=1)
    if max_tokens is None:
        raise missing("max_tokens")
    messages = body.get("messages")
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list):
        raise wrong_type("messages", "a list of messages")
    out: list[JsonObj] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system, problems)
        if text:
            out.append({"role": "system", "content": text})
    for i, m in enumerate(messages):
        _message_to_openai(m, f"messages.{i}", out, problems)
    payload: JsonObj = {"model": model, "messages": out, "max_tokens": max_tokens}
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise wrong_type("stream", "a boolean")
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    for key in ("temperature", "top_p"):
        value = number(body, key)
        if value is not None:
            payload[key] = value
    top_k = integer(body, "top_k")
    if top_k is not None:
        payload["top_k"] = top_k
    if body.get("stop_sequences") is not None:
        payload["stop"] = str_list(body["stop_sequences"], "stop_sequences")
    if body.get("tools") is not None:
        payload["tools"] = _tools_to_openai(body["tools"], problems)
    if body.get("tool_choice") is not None:
        _tool_choice_to_openai(body["tool_choice"], payload)
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise wrong_type("metadata", "an object")
        if isinstance(metadata.get("user_id"), str):
            payload["user"] = metadata["user_id"]
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise wrong_type("thinking", "an object")
        if thinking.get("type") in ("enabled", "adaptive"):
            budget = thinking.get("budget_tokens")
            budget = budget if isinstance(budget, int) else 8192
            payload["reasoning_effort"] = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    tier = body.get("service_tier")
    if tier not in (None, "auto"):
        problems.append(refuse("service_tier", ONLY_ANTHROPIC))
    return payload, problems


def _system_text(system: Any, problems: list[GatewayError]) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise wrong_type("system", "a string or a list of text blocks")
    texts = []
    for j, block in enumerate(system):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise wrong_type(f"system.{j}", "a text block")
        texts.append(block["text"])
    return "\n".join(texts)


def _message_to_openai(m: Any, where: str, out: list[JsonObj], problems: list[GatewayError]) -> None:
    if not isinstance(m, dict):
        raise wrong_type(where, "an object with role and content")
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise GatewayError(
            400,
            f"{where}.role: must be 'user' or 'assistant'.",
            "invalid_request_error",
            "invalid_value",
            f"{where}.role",
        )
    content = m.get("content")
    if isinstance(content, str):
        out.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise wrong_type(f"{where}.content", "a string or a list of content blocks")
    parts: list[JsonObj] = []
    calls: list[JsonObj] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise wrong_type(at, "a content block with a type")
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise wrong_type(f"{at}.text", "a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_to_openai(block, at, problems))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise wrong_type(at, "a tool_use block with id and name")
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": args_text(block.get("input"))},
                }
            )
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise missing(f"{at}.tool_use_id")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": block["tool_use_id"],
                    "content": _tool_result_text(block, at, problems),
                }
            )
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # the model's own earlier reasoning: Anthropic itself leaves it out of later turns
        else:
            problems.append(refuse(f"{at}.type", f"content blocks of type {kind!r} {ONLY_ANTHROPIC}"))
    if not parts and not calls:
        return
    msg: JsonObj = {"role": role, "content": _parts_content(parts)}
    if calls:
        msg["tool_calls"] = calls
    out.append(msg)


def _parts_content(parts: list[JsonObj]) -> str | list[JsonObj] | None:
    """Text-only content as one string (every server takes it); with images, the list of parts."""
    if not parts:
        return None
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _image_to_openai(block: JsonObj, at: str, problems: list[GatewayError]) -> JsonObj:
    source = block.get("source")
    if not isinstance(source, dict):
        raise missing(f"{at}.source")
    if source.get("type") == "base64":
        data, media = source.get("data"), source.get("media_type")
        if not isinstance(data, str) or not isinstance(media, str):
            raise wrong_type(f"{at}.source", "a base64 source with media_type and data")
        check_base64(data, f"{at}.source.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    problems.append(
        refuse(f"{at}.source.type", f"image sources of type {source.get('type')!r} {ONLY_ANTHROPIC}")
    )
    return {"type": "text", "text": ""}


def _tool_result_text(block: JsonObj, at: str, problems: list[GatewayError]) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                problems.append(
                    refuse(f"{at}.content.{k}.type", f"tool results holding {kind!r} blocks {ONLY_ANTHROPIC}")
                )
        text = "\n".join(texts)
    else:
        raise wrong_type(f"{at}.content", "a string or a list of content blocks")
    # OpenAI's tool messages have no error flag: say it in the text the model reads
    return f"Error: {text}" if block.get("is_error") is True else text


def _tools_to_openai(tools: Any, problems: list[GatewayError]) -> list[JsonObj]:
    if not isinstance(tools, list):
        raise wrong_type("tools", "a list of tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise wrong_type(f"tools.{i}", "an object")
        if t.get("type") not in (None, "custom"):
            problems.append(refuse(f"tools.{i}.type", f"server tools ({t.get('type')!r}) {ONLY_ANTHROPIC}"))
            continue
        if not isinstance(t.get("name"), str):
            raise missing(f"tools.{i}.name")
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise missing(f"tools.{i}.input_schema")
        fn: JsonObj = {"name": t["name"], "parameters": schema}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice_to_openai(choice: Any, payload: JsonObj) -> None:
    if not isinstance(choice, dict):
        raise wrong_type("tool_choice", "an object")
    kind = choice.get("type")
    if kind == "auto":
        payload["tool_choice"] = "auto"
    elif kind == "any":
        payload["tool_choice"] = "required"
    elif kind == "none":
        payload["tool_choice"] = "none"
    elif kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise missing("tool_choice.name")
        payload["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise GatewayError(
            400,
            "tool_choice.type: must be one of auto, any, tool, none.",
            "invalid_request_error",
            "invalid_value",
            "tool_choice.type",
        )
    if choice.get("disable_parallel_tool_use") is True:
        payload["parallel_tool_calls"] = False


# --------------------------------------------------------------------------- answers: OpenAI -> Anthropic


def usage_from_openai(usage: Any) -> JsonObj:
    """Anthropic usage from OpenAI's: its ``input_tokens`` leave out the tokens read from a cache."""
    prompt, completion, cached = usage_counts(usage)
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def message_from_completion(completion: JsonObj, model: str, msg_id: str) -> JsonObj:
    """An OpenAI chat completion as an Anthropic Message (``model``: the name the client asked for)."""
    choice = first_choice(completion)
    m = sub(choice, "message")
    content: list[JsonObj] = []
    text = content_text(m.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = seq(m, "tool_calls")
    for i, tc in enumerate(calls):
        fn = sub(tc, "function")
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(tc.get("id") if isinstance(tc, dict) else None, msg_id, i),
                "name": str(fn.get("name") or ""),
                "input": args_object(fn.get("arguments")),
            }
        )
    stop = STOP_REASON.get(str(choice.get("finish_reason")), "end_turn")
    if calls and stop == "end_turn":
        stop = "tool_use"
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage_from_openai(completion.get("usage")),
    }


def tool_use_id(given: Any, msg_id: str, index: int) -> str:
    return given if isinstance(given, str) and given else f"toolu_{msg_id.removeprefix('msg_')}_{index}"


def error_from_openai(status: int, err: Any) -> JsonObj:
    """An OpenAI error envelope's ``error`` object as Anthropic's error body (status kept)."""
    message = err.get("message") if isinstance(err, dict) else None
    return {
        "type": "error",
        "error": {"type": error_type(status), "message": str(message or f"HTTP {status}")},
    }


def error_type(status: int) -> str:
    kind = ERROR_TYPES.get(status)
    if kind is not None:
        return kind
    return "invalid_request_error" if status < 500 else "api_error"


# --------------------------------------------------------------------------- requests: OpenAI -> Anthropic

# OpenAI fields with no Messages equivalent that change the answer: refused when set
_REFUSED = ("n", "logprobs", "top_logprobs", "logit_bias", "frequency_penalty", "presence_penalty", "seed", "response_format", "audio", "modalities", "prediction", "functions")  # fmt: skip
_IGNORED = frozenset({"model", "stream_options", "store", "service_tier", "metadata", "parallel_tool_calls"})


def request_from_openai(payload: JsonObj, max_tokens_default: int = DEFAULT_MAX_TOKENS) -> JsonObj:
    """An OpenAI chat request (already checked by the gateway) as a Messages request body."""
    for key in _REFUSED:
        value = payload.get(key)
        if value is not None and value is not False and not (key == "n" and value == 1):
            raise refuse(key, "Anthropic's Messages API has no equivalent; leave it out for this model.")
    system: list[str] = []
    messages: list[JsonObj] = []
    for i, m in enumerate(payload.get("messages") or []):
        _message_from_openai(m, f"messages.{i}", system, messages)
    out: JsonObj = {
        "model": payload["model"],
        "max_tokens": payload.get("max_tokens") or payload.get("max_completion_tokens") or max_tokens_default,
        "messages": messages,
    }
    if system:
        out["system"] = "\n".join(system)
    if payload.get("stream"):
        out["stream"] = True
    for key in ("temperature", "top_p", "top_k"):
        if payload.get(key) is not None:
            out[key] = payload[key]
    stop = payload.get("stop")
    if stop:
        out["stop_sequences"] = str_list(stop, "stop")
    tools = payload.get("tools")
    if tools:
        out["tools"] = [_tool_from_openai(t, f"tools.{i}") for i, t in enumerate(tools)]
    choice = _tool_choice_from_openai(payload.get("tool_choice"))
    if payload.get("parallel_tool_calls") is False and tools:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    if isinstance(payload.get("user"), str):
        out["metadata"] = {"user_id": payload["user"]}
    effort = payload.get("reasoning_effort")
    if effort in ("low", "medium", "high"):
        budget = {"low": 2048, "medium": 8192, "high": 24576}[effort]
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        out["max_tokens"] = max(out["max_tokens"], budget + 1024)
    return out


def _message_from_openai(m: Any, where: str, system: list[str], out: list[JsonObj]) -> None:
    if not isinstance(m, dict):
        raise wrong_type(where, "an object")
    role = m.get("role")
    content = m.get("content")
    if role in ("system", "developer"):
        system.append(content_text(content))
        return
    if role == "tool":
        block = {
            "type": "tool_result",
            "tool_use_id": str(m.get("tool_call_id") or ""),
            "content": content_text(content),
        }
        if (
            out
            and out[-1]["role"] == "user"
            and isinstance(out[-1]["content"], list)
            and _all_results(out[-1])
        ):
            out[-1]["content"].append(block)  # parallel calls: every result in one user turn
        else:
            out.append({"role": "user", "content": [block]})
        return
    if role not in ("user", "assistant"):
        raise refuse(f"{where}.role", f"role {role!r} has no equivalent in Anthropic's Messages API.")
    blocks: list[JsonObj] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            blocks.append(_part_from_openai(part, f"{where}.content.{j}"))
    for k, tc in enumerate(m.get("tool_calls") or []):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict):
            raise wrong_type(f"{where}.tool_calls.{k}", "a function call")
        blocks.append(
            {
                "type": "tool_use",
                "id": str(tc.get("id") or f"toolu_{k}"),
                "name": str(fn.get("name") or ""),
                "input": args_object(fn.get("arguments")),
            }
        )
    if isinstance(content, str) and len(blocks) == 1 and blocks[0]["type"] == "text":
        out.append({"role": role, "content": content})
    else:
        out.append({"role": role, "content": blocks})


def _all_results(msg: JsonObj) -> bool:
    return all(b.get("type") == "tool_result" for b in msg["content"])


def _part_from_openai(part: Any, at: str) -> JsonObj:
    if not isinstance(part, dict):
        raise wrong_type(at, "a content part")
    if part.get("type") == "text":
        return {"type": "text", "text": str(part.get("text") or "")}
    if part.get("type") == "image_url":
        iu = part.get("image_url")
        url = iu.get("url") if isinstance(iu, dict) else iu
        if not isinstance(url, str):
            raise missing(f"{at}.image_url.url")
        inline = parse_data_uri(url)
        if inline is not None:
            return {"type": "image", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise refuse(
        f"{at}.type", f"content parts of type {part.get('type')!r} have no equivalent in Anthropic's API."
    )


def _tool_from_openai(tool: Any, at: str) -> JsonObj:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
        raise refuse(f"{at}.type", "only function tools can be sent to Anthropic.")
    out: JsonObj = {
        "name": str(fn.get("name") or ""),
        "input_schema": fn.get("parameters")
        if isinstance(fn.get("parameters"), dict)
        else {"type": "object"},
    }
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    return out


def _tool_choice_from_openai(choice: Any) -> JsonObj | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": str(choice["function"].get("name") or "")}
    raise refuse("tool_choice", "must be auto, required, none or a function.")


# --------------------------------------------------------------------------- answers: Anthropic -> OpenAI


def usage_to_openai(usage: Any) -> JsonObj:
    u = usage if isinstance(usage, dict) else {}
    fresh = _n(u.get("input_tokens"))
    read = _n(u.get("cache_read_input_tokens"))
    prompt = fresh + read + _n(u.get("cache_creation_input_tokens"))
    completion = _n(u.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
    }


def completion_from_message(message: JsonObj, created: int) -> JsonObj:
    """An Anthropic Message as an OpenAI chat completion."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[JsonObj] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking") or ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name") or ""),
                        "arguments": args_text(block.get("input")),
                    },
                }
            )
    msg: JsonObj = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    if thinking:
        msg["reasoning_content"] = "".join(thinking)
    return {
        "id": f"chatcmpl-{message.get('id') or 'anthropic'}",
        "object": "chat.completion",
        "created": created,
        "model": str(message.get("model") or ""),
        "choices": [
            {
                "index": 0,
                "message": msg,
                "finish_reason": FINISH_REASON.get(str(message.get("stop_reason")), "stop"),
            }
        ],
        "usage": usage_to_openai(message.get("usage")),
    }


def error_to_openai(status: int, body: Any) -> JsonObj:
    """Anthropic's error body as the ``error`` object of an OpenAI envelope."""
    err = body.get("error") if isinstance(body, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    return {
        "message": str(message or f"Anthropic answered {status}"),
        "type": str(kind or "upstream_error"),
        "param": None,
        "code": str(kind) if kind else None,
    }


def _n(v: Any) -> int:
    return v if type(v) is int and v > 0 else 0


def estimate_tokens(body: JsonObj) -> int:
    """A token estimate of a Messages request (characters / 4, at least 1): what
    ``/v1/messages/count_tokens`` answers for upstreams that cannot count."""
    chars = 0
    stack: list[Any] = [body.get("system"), body.get("messages"), body.get("tools")]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if item.get("type") == "image":
                chars += 6000  # Anthropic counts ~1500 tokens for a typical image
                continue
            stack.extend(
                v for k, v in item.items() if k not in ("type", "id", "tool_use_id", "cache_control")
            )
    return max(1, (chars + 3) // 4)
