"""Ollama's native API <-> OpenAI chat and embeddings, both ways; streams are in
:mod:`aib.codecs.ollama_stream`.

Front door: ``/api/chat`` (:func:`chat_to_openai`), ``/api/generate`` (:func:`generate_to_openai`,
sent on as a chat: Ollama applies the model's chat template to a prompt, so does a chat endpoint),
``/api/embed`` and ``/api/embeddings``; answers by :func:`chat_from_completion`,
:func:`generate_from_completion`, :func:`embed_from_openai`, :func:`embeddings_from_openai`.

Outbound adapter (``type: ollama`` with ``api: native``): :func:`chat_from_openai`,
:func:`generate_from_openai`, :func:`embed_request_from_openai` for requests, and
:func:`completion_from_chat`, :func:`completion_from_generate`, :func:`embeddings_to_openai` for
answers. ``num_ctx`` comes from the model's configured ``context_length`` (Ollama's ``/v1`` ignores
it: long prompts are cut at the server's default context without an error).

Options a translation cannot carry (``mirostat``, ``tfs_z``, ``think``, ``raw`` ...) are *problems*:
refused, naming the field, only when the request goes to an upstream that is not an Ollama server.
Resource hints (``keep_alive``, ``num_ctx``, ``num_gpu``, ``num_thread`` ...) mean nothing to
other servers, whose context and placement are fixed when they start; they are passed on to Ollama
upstreams and documented as ignored by others (docs/apis.md).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from aib.codecs.common import (
    JsonObj,
    args_object,
    args_text,
    check_base64,
    content_text,
    data_uri,
    first_choice,
    flag,
    missing,
    model_of,
    parse_data_uri,
    refuse,
    str_list,
    sub,
    usage_counts,
    wrong_type,
)
from aib.gateway.errors import GatewayError

ONLY_OLLAMA = "is only understood by an Ollama upstream, and this request was routed elsewhere"
# options with an OpenAI equivalent: Ollama name -> OpenAI request field
OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "repeat_penalty": "repeat_penalty",
}
# options that place or size the model on an Ollama server: nothing to translate for other servers
RESOURCE_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock", "num_thread", "numa", "embedding_only"}
)  # fmt: skip
FINISH_TO_DONE = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "stop",
    "function_call": "stop",
    "content_filter": "stop",
}
DONE_TO_FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


# --------------------------------------------------------------------------- requests: Ollama -> OpenAI


def _common(body: JsonObj, payload: JsonObj, problems: list[GatewayError]) -> bool:
    """Fields shared by /api/chat and /api/generate: stream (default true), format, options."""
    stream = flag(body, "stream", True)
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    fmt = body.get("format")
    if fmt == "json":
        payload["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt},
        }
    elif fmt not in (None, ""):
        raise wrong_type("format", '"json" or a JSON schema object')
    _options(body.get("options"), payload, problems)
    think = body.get("think")
    if think not in (None, False):
        problems.append(refuse("think", ONLY_OLLAMA))
    if body.get("logprobs"):
        problems.append(refuse("logprobs", ONLY_OLLAMA))
    keep_alive = body.get("keep_alive")
    if keep_alive is not None and not isinstance(keep_alive, str | int | float):
        raise wrong_type("keep_alive", "a duration string or a number of seconds")
    return stream


def _options(options: Any, payload: JsonObj, problems: list[GatewayError]) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise wrong_type("options", "an object")
    for key, value in options.items():
        at = f"options.{key}"
        if value is None:
            continue
        if key in OPTION_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise wrong_type(at, "a number")
            payload[OPTION_FIELDS[key]] = value
        elif key == "num_predict":
            if isinstance(value, bool) or not isinstance(value, int):
                raise wrong_type(at, "an integer")
            if value >= 0:  # -1: no limit, -2: fill the context (both: the upstream's default)
                payload["max_tokens"] = value
        elif key == "stop":
            payload["stop"] = str_list(value, at)
        elif key not in RESOURCE_OPTIONS:
            problems.append(refuse(at, ONLY_OLLAMA))


def chat_to_openai(body: JsonObj) -> tuple[JsonObj, bool, list[GatewayError]]:
    """An ``/api/chat`` request as an OpenAI chat request: (payload, stream, problems)."""
    problems: list[GatewayError] = []
    model = model_of(body)
    messages = body.get("messages")
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise wrong_type("messages", "a list of messages")
    if not messages:  # an empty chat loads the model on an Ollama server
        problems.append(refuse("messages", "an empty chat (which loads a model) " + ONLY_OLLAMA))
    out = _messages_to_openai(messages)
    payload: JsonObj = {"model": model, "messages": out}
    stream = _common(body, payload, problems)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise wrong_type("tools", "a list of tools")
        if tools:
            payload["tools"] = tools
    return payload, stream, problems


def _messages_to_openai(messages: list[Any]) -> list[JsonObj]:
    out: list[JsonObj] = []
    pending: list[tuple[str, str]] = []  # (tool name, call id) of calls without a result yet
    for i, m in enumerate(messages):
        at = f"messages.{i}"
        if not isinstance(m, dict):
            raise wrong_type(at, "an object with role and content")
        role = m.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise GatewayError(
                400,
                f"{at}.role: must be system, user, assistant or tool.",
                "invalid_request_error",
                "invalid_value",
                f"{at}.role",
            )
        content = m.get("content", "")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise wrong_type(f"{at}.content", "a string")
        msg: JsonObj = {"role": role, "content": content}
        images = m.get("images")
        if images:
            if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
                raise wrong_type(f"{at}.images", "a list of base64 strings")
            parts: list[JsonObj] = [{"type": "text", "text": content}] if content else []
            for k, b64 in enumerate(images):
                check_base64(b64, f"{at}.images.{k}")
                parts.append({"type": "image_url", "image_url": {"url": data_uri(b64)}})
            msg["content"] = parts
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list):
                raise wrong_type(f"{at}.tool_calls", "a list of tool calls")
            msg["tool_calls"] = []
            for k, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise wrong_type(f"{at}.tool_calls.{k}", "a tool call with function.name")
                cid = (
                    call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call_{i}_{k}"
                )
                pending.append((fn["name"], cid))
                msg["tool_calls"].append(
                    {
                        "id": cid,
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": args_text(fn.get("arguments"))},
                    }
                )
            if not content:
                msg["content"] = None
        elif role == "tool":
            msg["tool_call_id"] = _result_of(m, pending)
        out.append(msg)
    return out


def _result_of(m: JsonObj, pending: list[tuple[str, str]]) -> str:
    """The call a tool message answers: its ``tool_call_id``, else the first open call of its
    ``tool_name``, else the first open call (Ollama matches results to calls by position)."""
    given = m.get("tool_call_id")
    for j, (_, cid) in enumerate(pending):
        if cid == given:
            return pending.pop(j)[1]
    if isinstance(given, str) and given:
        return given
    name = m.get("tool_name")
    for j, (n, _) in enumerate(pending):
        if n == name:
            return pending.pop(j)[1]
    return pending.pop(0)[1] if pending else "call_0"


def generate_to_openai(body: JsonObj) -> tuple[JsonObj, bool, list[GatewayError]]:
    """An ``/api/generate`` request as an OpenAI chat request (system + one user turn)."""
    problems: list[GatewayError] = []
    model = model_of(body)
    prompt = body.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise wrong_type("prompt", "a string")
    if not prompt:
        problems.append(refuse("prompt", "an empty prompt (which loads or unloads a model) " + ONLY_OLLAMA))
    for key in ("suffix", "template", "context", "raw"):
        if body.get(key) not in (None, "", False, []):
            problems.append(refuse(key, ONLY_OLLAMA))
    messages: list[JsonObj] = []
    system = body.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise wrong_type("system", "a string")
        if system:
            messages.append({"role": "system", "content": system})
    messages.extend(_messages_to_openai([{"role": "user", "content": prompt, "images": body.get("images")}]))
    payload: JsonObj = {"model": model, "messages": messages}
    return payload, _common(body, payload, problems), problems


def embed_to_openai(body: JsonObj) -> tuple[JsonObj, list[GatewayError]]:
    """An ``/api/embed`` request as an OpenAI embeddings request."""
    problems: list[GatewayError] = []
    model = model_of(body)
    if "input" not in body:
        raise missing("input")
    inputs = body["input"]
    if not (
        isinstance(inputs, str) or (isinstance(inputs, list) and all(isinstance(s, str) for s in inputs))
    ):
        raise wrong_type("input", "a string or a list of strings")
    payload: JsonObj = {"model": model, "input": inputs}
    dims = body.get("dimensions")
    if dims is not None:
        if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
            raise wrong_type("dimensions", "a positive integer")
        payload["dimensions"] = dims
    _options(body.get("options"), {}, problems)  # sampling options mean nothing to an embedding
    return payload, problems


def embeddings_to_openai(body: JsonObj) -> tuple[JsonObj, list[GatewayError]]:
    """A legacy ``/api/embeddings`` request (``prompt``) as an OpenAI embeddings request."""
    problems: list[GatewayError] = []
    model = model_of(body)
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise wrong_type("prompt", "a string")
    if not prompt:
        problems.append(refuse("prompt", "an empty prompt (which loads a model) " + ONLY_OLLAMA))
    _options(body.get("options"), {}, problems)
    return {"model": model, "input": prompt}, problems


# --------------------------------------------------------------------------- answers: OpenAI -> Ollama


def metrics(usage: Any, timings: tuple[int, int, int]) -> JsonObj:
    """The final object's counts and durations (nanoseconds): ``timings`` = (total, prompt eval, eval).
    Ollama leaves out zero durations (Go's ``omitempty``); so does this."""
    prompt, completion, _ = usage_counts(usage)
    total, prompt_ns, eval_ns = timings
    out: JsonObj = {"total_duration": total, "load_duration": 0}
    out["prompt_eval_count"] = prompt
    if prompt_ns:
        out["prompt_eval_duration"] = prompt_ns
    out["eval_count"] = completion
    if eval_ns:
        out["eval_duration"] = eval_ns
    return {k: v for k, v in out.items() if v or k in ("prompt_eval_count", "eval_count")}


def tool_calls_from_openai(calls: Any) -> list[JsonObj]:
    """OpenAI tool calls as Ollama's (arguments as an object, ``function.index`` in order)."""
    out = []
    for i, tc in enumerate(calls if isinstance(calls, list) else []):
        fn = sub(tc, "function")
        call: JsonObj = {
            "function": {
                "index": i,
                "name": str(fn.get("name") or ""),
                "arguments": args_object(fn.get("arguments")),
            }
        }
        if isinstance(tc, dict) and tc.get("id"):
            call["id"] = tc["id"]
        out.append(call)
    return out


def chat_from_completion(
    completion: JsonObj, model: str, created_at: str, timings: tuple[int, int, int]
) -> JsonObj:
    choice = first_choice(completion)
    m = sub(choice, "message")
    message: JsonObj = {"role": "assistant", "content": content_text(m.get("content"))}
    calls = tool_calls_from_openai(m.get("tool_calls"))
    if calls:
        message["tool_calls"] = calls
    reasoning = m.get("reasoning_content") or m.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        message["thinking"] = reasoning
    return {
        "model": model,
        "created_at": created_at,
        "message": message,
        "done": True,
        "done_reason": FINISH_TO_DONE.get(str(choice.get("finish_reason")), "stop"),
        **metrics(completion.get("usage"), timings),
    }


def generate_from_completion(
    completion: JsonObj, model: str, created_at: str, timings: tuple[int, int, int]
) -> JsonObj:
    choice = first_choice(completion)
    m = sub(choice, "message")
    out: JsonObj = {
        "model": model,
        "created_at": created_at,
        "response": content_text(m.get("content")),
        "done": True,
        "done_reason": FINISH_TO_DONE.get(str(choice.get("finish_reason")), "stop"),
        **metrics(completion.get("usage"), timings),
    }
    return out


def _vectors(answer: JsonObj) -> list[Any]:
    data = answer.get("data")
    if not isinstance(data, list):
        return []
    items = sorted((d for d in data if isinstance(d, dict)), key=lambda d: d.get("index", 0))
    return [_floats(d.get("embedding")) for d in items]


def _floats(emb: Any) -> Any:
    if isinstance(emb, str):  # base64 float32, as some servers answer
        raw = base64.b64decode(emb)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return emb


def embed_from_openai(answer: JsonObj, model: str, total_ns: int) -> JsonObj:
    prompt, _, _ = usage_counts(answer.get("usage"))
    out: JsonObj = {
        "model": model,
        "embeddings": _vectors(answer),
        "total_duration": total_ns,
        "load_duration": 0,
    }
    out["prompt_eval_count"] = prompt
    return out


def embeddings_from_openai(answer: JsonObj) -> JsonObj:
    vectors = _vectors(answer)
    return {"embedding": vectors[0] if vectors else []}


# --------------------------------------------------------------------------- requests: OpenAI -> Ollama

_IGNORED = frozenset({"model", "messages", "stream", "stream_options", "user", "store", "metadata", "parallel_tool_calls", "service_tier", "n"})  # fmt: skip
_TO_OPTION = {v: k for k, v in OPTION_FIELDS.items()}


def _options_from_openai(payload: JsonObj, known: frozenset[str], num_ctx: int | None) -> JsonObj:
    options: JsonObj = {}
    for key, value in payload.items():
        if value is None or key in known or key in _IGNORED:
            continue
        if key in _TO_OPTION:
            options[_TO_OPTION[key]] = value
        elif key in ("max_tokens", "max_completion_tokens"):
            options["num_predict"] = value
        elif key == "stop":
            options["stop"] = str_list(value, "stop")
        else:
            raise refuse(
                key,
                "has no equivalent in Ollama's native API; set `api: openai` on the provider to send it to Ollama's /v1 instead.",
            )
    if payload.get("n") not in (None, 1):
        raise refuse("n", "Ollama generates one choice per request.")
    if num_ctx:
        options["num_ctx"] = num_ctx
    return options


def _format_from_openai(fmt: Any) -> Any:
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return "json"
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            return schema["schema"]
    raise refuse("response_format", "must be text, json_object or json_schema with a schema.")


def chat_from_openai(payload: JsonObj, stream: bool, num_ctx: int | None, keep_alive: Any) -> JsonObj:
    """An OpenAI chat request as an ``/api/chat`` body."""
    options = _options_from_openai(
        payload, frozenset({"tools", "tool_choice", "response_format", "reasoning_effort"}), num_ctx
    )
    if payload.get("tool_choice") not in (None, "auto"):
        raise refuse("tool_choice", "Ollama chooses tools itself; leave tool_choice out (or auto).")
    names: dict[str, str] = {}
    messages = []
    for i, m in enumerate(payload.get("messages") or []):
        messages.append(_message_from_openai(m, f"messages.{i}", names))
    out: JsonObj = {"model": payload["model"], "messages": messages, "stream": stream}
    if payload.get("tools"):
        out["tools"] = payload["tools"]
    fmt = _format_from_openai(payload.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    effort = payload.get("reasoning_effort")
    if effort is not None:
        out["think"] = effort if effort in ("low", "medium", "high") else bool(effort != "none")
    if options:
        out["options"] = options
    if keep_alive is not None:
        out["keep_alive"] = keep_alive
    return out


def _message_from_openai(m: Any, at: str, names: dict[str, str]) -> JsonObj:
    if not isinstance(m, dict):
        raise wrong_type(at, "an object")
    role = m.get("role")
    if role == "developer":
        role = "system"
    msg: JsonObj = {"role": role, "content": ""}
    content = m.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text") or ""))
            elif kind == "image_url":
                iu = part.get("image_url")
                url = iu.get("url") if isinstance(iu, dict) else iu
                inline = parse_data_uri(url) if isinstance(url, str) else None
                if inline is None:
                    raise refuse(
                        f"{at}.content.{j}.image_url",
                        "Ollama takes inline images only (data: URIs), not links.",
                    )
                images.append(inline[1])
            else:
                raise refuse(
                    f"{at}.content.{j}.type",
                    f"content parts of type {kind!r} have no equivalent in Ollama's API.",
                )
        msg["content"] = "".join(texts)
        if images:
            msg["images"] = images
    elif content is not None:
        msg["content"] = str(content)
    calls = m.get("tool_calls")
    if calls:
        msg["tool_calls"] = tool_calls_from_openai(calls)
        for tc in calls:
            if isinstance(tc, dict) and isinstance(tc.get("function"), dict):
                names[str(tc.get("id"))] = str(tc["function"].get("name") or "")
    if role == "tool":
        cid = m.get("tool_call_id")
        if isinstance(cid, str):
            msg["tool_call_id"] = cid
            if cid in names:
                msg["tool_name"] = names[cid]
    return msg


def generate_from_openai(payload: JsonObj, stream: bool, num_ctx: int | None, keep_alive: Any) -> JsonObj:
    """An OpenAI (legacy) completions request as an ``/api/generate`` body: the prompt is sent raw,
    as OpenAI's completions continue the text without a chat template."""
    prompt = payload.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise refuse("prompt", "Ollama completes one text prompt per request.")
        prompt = prompt[0]
    options = _options_from_openai(
        {k: v for k, v in payload.items() if k != "prompt"}, frozenset({"suffix", "echo"}), num_ctx
    )
    if payload.get("echo"):
        raise refuse("echo", "Ollama does not echo the prompt.")
    out: JsonObj = {"model": payload["model"], "prompt": prompt, "raw": True, "stream": stream}
    if isinstance(payload.get("suffix"), str):
        out["suffix"] = payload["suffix"]
    if options:
        out["options"] = options
    if keep_alive is not None:
        out["keep_alive"] = keep_alive
    return out


def embed_request_from_openai(payload: JsonObj, num_ctx: int | None, keep_alive: Any) -> JsonObj:
    inputs = payload.get("input")
    if not (
        isinstance(inputs, str) or (isinstance(inputs, list) and all(isinstance(s, str) for s in inputs))
    ):
        raise refuse("input", "Ollama embeds text: a string or a list of strings (not token ids).")
    out: JsonObj = {"model": payload["model"], "input": inputs, "truncate": True}
    if isinstance(payload.get("dimensions"), int):
        out["dimensions"] = payload["dimensions"]
    if num_ctx:
        out["options"] = {"num_ctx": num_ctx}
    if keep_alive is not None:
        out["keep_alive"] = keep_alive
    return out


# --------------------------------------------------------------------------- answers: Ollama -> OpenAI


def usage_to_openai(answer: JsonObj) -> JsonObj:
    prompt = answer.get("prompt_eval_count") or 0
    completion = answer.get("eval_count") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_of(answer: JsonObj, has_calls: bool) -> str:
    reason = DONE_TO_FINISH.get(str(answer.get("done_reason") or "stop"), "stop")
    return "tool_calls" if has_calls and reason == "stop" else reason


def openai_tool_calls(calls: Any) -> list[JsonObj]:
    out = []
    for i, tc in enumerate(calls if isinstance(calls, list) else []):
        fn = sub(tc, "function")
        out.append(
            {
                "id": str(tc.get("id") or f"call_{i}") if isinstance(tc, dict) else f"call_{i}",
                "type": "function",
                "function": {"name": str(fn.get("name") or ""), "arguments": args_text(fn.get("arguments"))},
            }
        )
    return out


def completion_from_chat(answer: JsonObj, created: int, cid: str) -> JsonObj:
    m = sub(answer, "message")
    calls = openai_tool_calls(m.get("tool_calls"))
    msg: JsonObj = {
        "role": "assistant",
        "content": str(m.get("content") or "") if not calls or m.get("content") else None,
    }
    if calls:
        msg["tool_calls"] = calls
    if m.get("thinking"):
        msg["reasoning_content"] = m["thinking"]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": str(answer.get("model") or ""),
        "choices": [{"index": 0, "message": msg, "finish_reason": finish_of(answer, bool(calls))}],
        "usage": usage_to_openai(answer),
    }


def completion_from_generate(answer: JsonObj, created: int, cid: str) -> JsonObj:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": str(answer.get("model") or ""),
        "choices": [
            {
                "index": 0,
                "text": str(answer.get("response") or ""),
                "logprobs": None,
                "finish_reason": finish_of(answer, False),
            }
        ],
        "usage": usage_to_openai(answer),
    }


def embed_answer_to_openai(answer: JsonObj, encoding: str | None) -> JsonObj:
    data = []
    for i, vec in enumerate(answer.get("embeddings") or []):
        emb: Any = vec
        if encoding == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    prompt = answer.get("prompt_eval_count") or 0
    return {
        "object": "list",
        "data": data,
        "model": str(answer.get("model") or ""),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def error_message(body: Any, status: int) -> str:
    """The message of Ollama's error body ``{"error": "..."}``."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    return str(err) if err else f"Ollama answered {status}"
