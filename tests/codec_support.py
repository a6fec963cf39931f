"""Helpers for the codec and door tests (not a test module).

* :class:`Turn` - an answer as text pieces and tool calls; :func:`chunks` streams it as OpenAI chat
  chunks (arguments split in fragments), :func:`completion` gives the same answer whole.
* :func:`accumulate` - OpenAI chunks back into one completion (what ``openai``'s stream helpers do).
* :func:`turns` - a hypothesis strategy of answers.
* :data:`FIXTURES` - recorded answers (tests/fixtures/codecs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from aib.codecs.openai_sse import ChunkReader, ToolCalls

FIXTURES = Path(__file__).parent / "fixtures" / "codecs"


@dataclass
class Turn:
    texts: list[str] = field(default_factory=list)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (id, name, arguments)
    finish: str = "stop"
    usage: tuple[int, int] | None = (7, 5)
    split: int = 3  # arguments are streamed in pieces of this many characters


def completion(t: Turn, model: str = "m") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(t.texts) or None}
    if t.calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for cid, name, args in t.calls
        ]
    out: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": t.finish}],
    }
    if t.usage is not None:
        out["usage"] = {
            "prompt_tokens": t.usage[0],
            "completion_tokens": t.usage[1],
            "total_tokens": sum(t.usage),
        }
    return out


def chunks(t: Turn, model: str = "m") -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

    def one(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [one({"role": "assistant", "content": ""})]
    out += [one({"content": text}) for text in t.texts if text]
    for i, (cid, name, args) in enumerate(t.calls):
        text = json.dumps(args)
        first = {"index": i, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}
        out.append(one({"tool_calls": [first]}))
        for k in range(0, len(text), t.split):
            out.append(one({"tool_calls": [{"index": i, "function": {"arguments": text[k : k + t.split]}}]}))
    out.append(one({}, t.finish))
    if t.usage is not None:
        out.append(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": t.usage[0],
                    "completion_tokens": t.usage[1],
                    "total_tokens": sum(t.usage),
                },
            }
        )
    return out


def sse(objs: list[dict[str, Any]], done: bool = True) -> bytes:
    data = b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs)
    return data + (b"data: [DONE]\n\n" if done else b"")


def accumulate(events: list[dict[str, Any] | None]) -> dict[str, Any]:
    """OpenAI chunks (None: [DONE]) as one completion: text, tool calls, finish, usage."""
    text, finish, usage = [], None, None
    tools = ToolCalls()
    for ev in events:
        if ev is None:
            continue
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices") or []:
            delta = ch.get("delta") or {}
            text.append(delta.get("content") or "")
            tools.add(delta.get("tool_calls"))
            finish = ch.get("finish_reason") or finish
    calls = [(c["id"], c["name"], json.loads(c["arguments"] or "{}")) for c in tools.ordered()]
    return {"text": "".join(text), "calls": calls, "finish": finish, "usage": usage}


def read_sse(data: bytes) -> list[dict[str, Any] | None]:
    reader = ChunkReader()
    return reader.feed(data) + reader.close()


_word = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
)
_args = st.dictionaries(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    st.one_of(st.integers(-99, 99), _word, st.booleans()),
    max_size=3,
)


@st.composite
def turns(draw: Any, tools: bool = True) -> Turn:
    texts = draw(st.lists(_word, max_size=6))
    calls = []
    if tools:
        n = draw(st.integers(0, 3))
        calls = [
            (f"call_{i}", draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True)), draw(_args)) for i in range(n)
        ]
    if not texts and not calls:
        texts = ["x"]
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))
    usage = draw(st.one_of(st.none(), st.tuples(st.integers(0, 5000), st.integers(0, 5000))))
    return Turn(texts, calls, finish, usage, draw(st.integers(1, 7)))
