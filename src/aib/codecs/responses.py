"""OpenAI Responses -> OpenAI chat, and chat completions back as Response objects; the stream of
events is in :mod:`aib.codecs.responses_stream`.

Stateless: ``previous_response_id``, ``conversation`` and ``background`` are refused at once (the
gateway keeps no responses), and answers say ``store: false``. ``input`` as text or items (messages,
``function_call``, ``function_call_output``), ``instructions``, function tools, ``tool_choice``,
``max_output_tokens``, ``text.format`` and ``reasoning.effort`` are translated. What only OpenAI's
own Responses API serves (hosted tools, files, stored prompts and items) comes back as *problems*:
refused, naming the field, when the request goes to an upstream without a Responses API.
"""

from __future__ import annotations

from typing import Any

from aib.codecs.common import (
    JsonObj,
    content_text,
    first_choice,
    flag,
    integer,
    missing,
    model_of,
    number,
    refuse,
    seq,
    sub,
    usage_counts,
    wrong_type,
)
from aib.gateway.errors import GatewayError

ONLY_RESPONSES = (
    "is only understood by an upstream with a Responses API, and this request was routed elsewhere"
)
STATEFUL = "this gateway is stateless (every response is store: false); send the whole conversation in `input` instead."
# fields answered by the translation, echoed back, or harmless to leave out of a chat request
KNOWN = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "temperature", "top_p",
        "stream", "parallel_tool_calls", "text", "reasoning", "metadata", "user", "store", "truncation",
        "include", "service_tier", "prompt_cache_key", "safety_identifier", "stream_options",
        "previous_response_id", "conversation", "background",
    }
)  # fmt: skip


def request_to_openai(body: JsonObj) -> tuple[JsonObj, bool, list[GatewayError], JsonObj]:
    """(chat payload, stream, problems, echo): ``echo`` holds the request fields a Response repeats."""
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise refuse(key, STATEFUL, "stateless_gateway")
    if body.get("background"):
        raise refuse("background", "background responses need stored state; " + STATEFUL, "stateless_gateway")
    problems = [refuse(k, ONLY_RESPONSES) for k in body if k not in KNOWN]
    model = model_of(body)
    if "input" not in body:
        raise missing("input")
    messages: list[JsonObj] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise wrong_type("instructions", "a string")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    inp = body["input"]
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            _item_to_openai(item, f"input.{i}", messages, problems)
    else:
        raise wrong_type("input", "a string or a list of input items")
    payload: JsonObj = {"model": model, "messages": messages}
    stream = flag(body, "stream", False)
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    max_out = integer(body, "max_output_tokens", minimum=1)
    if max_out is not None:
        payload["max_tokens"] = max_out
    for key in ("temperature", "top_p"):
        value = number(body, key)
        if value is not None:
            payload[key] = value
    if body.get("parallel_tool_calls") is not None:
        payload["parallel_tool_calls"] = flag(body, "parallel_tool_calls", True)
    if body.get("tools") is not None:
        tools = _tools_to_openai(body["tools"], problems)
        if tools:
            payload["tools"] = tools
    if body.get("tool_choice") is not None:
        choice = _tool_choice_to_openai(body["tool_choice"], problems)
        if choice is not None:
            payload["tool_choice"] = choice
    text = body.get("text")
    if text is not None:
        _text_format(text, payload)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        payload["reasoning_effort"] = reasoning["effort"]
    if isinstance(body.get("user"), str):
        payload["user"] = body["user"]
    echo = {k: body.get(k) for k in ("instructions", "tools", "tool_choice", "temperature", "top_p", "max_output_tokens", "parallel_tool_calls", "metadata", "text", "reasoning")}  # fmt: skip
    return payload, stream, problems, echo


def _item_to_openai(item: Any, at: str, out: list[JsonObj], problems: list[GatewayError]) -> None:
    if not isinstance(item, dict):
        raise wrong_type(at, "an input item object")
    kind = item.get("type")
    if kind in (None, "message") and "role" in item:
        _message_to_openai(item, at, out, problems)
    elif kind == "function_call":
        for key in ("call_id", "name"):
            if not isinstance(item.get(key), str):
                raise missing(f"{at}.{key}")
        args = item.get("arguments", "")
        if not isinstance(args, str):
            raise wrong_type(f"{at}.arguments", "a JSON string")
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": args},
        }
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant":  # one assistant turn: text, then its calls
            last.setdefault("tool_calls", []).append(call)
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise missing(f"{at}.call_id")
        output = item.get("output", "")
        if isinstance(output, list):
            output = _parts_text(output, f"{at}.output", problems)
        elif not isinstance(output, str):
            raise wrong_type(f"{at}.output", "a string or a list of content parts")
        out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    elif kind == "reasoning":
        return  # a model's earlier reasoning: opaque to other models, left out of the history
    else:
        problems.append(refuse(f"{at}.type", f"input items of type {kind!r} {ONLY_RESPONSES}"))


def _message_to_openai(item: JsonObj, at: str, out: list[JsonObj], problems: list[GatewayError]) -> None:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise GatewayError(
            400,
            f"{at}.role: must be user, assistant, system or developer.",
            "invalid_request_error",
            "invalid_value",
            f"{at}.role",
        )
    role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        out.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise wrong_type(f"{at}.content", "a string or a list of content parts")
    parts: list[JsonObj] = []
    for j, part in enumerate(content):
        where = f"{at}.content.{j}"
        if not isinstance(part, dict):
            raise wrong_type(where, "a content part")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "refusal"):
            text = part.get("refusal") if kind == "refusal" else part.get("text")
            if not isinstance(text, str):
                raise wrong_type(f"{where}.text", "a string")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: JsonObj = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            problems.append(refuse(f"{where}.type", f"content parts of type {kind!r} {ONLY_RESPONSES}"))
    if all(p["type"] == "text" for p in parts):
        out.append({"role": role, "content": "".join(p["text"] for p in parts)})
    else:
        out.append({"role": role, "content": parts})


def _parts_text(parts: list[Any], at: str, problems: list[GatewayError]) -> str:
    texts = []
    for j, part in enumerate(parts):
        if (
            isinstance(part, dict)
            and part.get("type") in ("input_text", "output_text")
            and isinstance(part.get("text"), str)
        ):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            problems.append(refuse(f"{at}.{j}.type", f"tool output parts of type {kind!r} {ONLY_RESPONSES}"))
    return "".join(texts)


def _tools_to_openai(tools: Any, problems: list[GatewayError]) -> list[JsonObj]:
    if not isinstance(tools, list):
        raise wrong_type("tools", "a list of tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise wrong_type(f"tools.{i}", "an object")
        if t.get("type") != "function":
            problems.append(refuse(f"tools.{i}.type", f"tools of type {t.get('type')!r} {ONLY_RESPONSES}"))
            continue
        if not isinstance(t.get("name"), str):
            raise missing(f"tools.{i}.name")
        fn: JsonObj = {"name": t["name"]}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        fn["parameters"] = (
            t["parameters"] if isinstance(t.get("parameters"), dict) else {"type": "object", "properties": {}}
        )
        if isinstance(t.get("strict"), bool):
            fn["strict"] = t["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice_to_openai(choice: Any, problems: list[GatewayError]) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    problems.append(refuse("tool_choice", f"{choice!r} {ONLY_RESPONSES}"))
    return None


def _text_format(text: Any, payload: JsonObj) -> None:
    if not isinstance(text, dict):
        raise wrong_type("text", "an object")
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise wrong_type("text.format", "an object")
    kind = fmt.get("type")
    if kind == "json_object":
        payload["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise missing("text.format.schema")
        schema: JsonObj = {"name": str(fmt.get("name") or "response"), "schema": fmt["schema"]}
        if isinstance(fmt.get("strict"), bool):
            schema["strict"] = fmt["strict"]
        payload["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        raise GatewayError(
            400,
            "text.format.type: must be text, json_object or json_schema.",
            "invalid_request_error",
            "invalid_value",
            "text.format.type",
        )


# --------------------------------------------------------------------------- answers


def usage_from_openai(usage: Any) -> JsonObj:
    prompt, completion, cached = usage_counts(usage)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def status_of(finish: Any) -> tuple[str, JsonObj | None]:
    """(status, incomplete_details) for a chat finish_reason."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(
    resp_id: str,
    created_at: int,
    model: str,
    echo: JsonObj,
    status: str,
    output: list[JsonObj],
    usage: JsonObj | None,
    incomplete: JsonObj | None = None,
    error: JsonObj | None = None,
) -> JsonObj:
    """A Response object (also the ``response`` of stream events)."""
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": echo.get("reasoning") or {"effort": None, "summary": None},
        "store": False,
        "temperature": echo["temperature"] if echo.get("temperature") is not None else 1.0,
        "text": echo.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo["tool_choice"] if echo.get("tool_choice") is not None else "auto",
        "tools": echo.get("tools") or [],
        "top_p": echo["top_p"] if echo.get("top_p") is not None else 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": echo.get("metadata") or {},
    }


def message_item(item_id: str, text: str, status: str = "completed") -> JsonObj:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> JsonObj:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def response_from_completion(completion: JsonObj, model: str, rid: str, echo: JsonObj) -> JsonObj:
    """An OpenAI chat completion as a Response (``rid``: this request's id, for the item ids)."""
    choice = first_choice(completion)
    m = sub(choice, "message")
    output: list[JsonObj] = []
    text = content_text(m.get("content"))
    if text:
        output.append(message_item(f"msg_{rid}", text))
    calls = seq(m, "tool_calls")
    for i, tc in enumerate(calls):
        fn = sub(tc, "function")
        call_id = tc.get("id") if isinstance(tc, dict) and tc.get("id") else f"call_{rid}_{i}"
        output.append(
            call_item(
                f"fc_{rid}_{i}", str(call_id), str(fn.get("name") or ""), str(fn.get("arguments") or "")
            )
        )
    status, incomplete = status_of(choice.get("finish_reason"))
    created = completion.get("created")
    created = created if isinstance(created, int) else 0
    return response_object(
        f"resp_{rid}",
        created,
        model,
        echo,
        status,
        output,
        usage_from_openai(completion.get("usage")),
        incomplete,
    )
