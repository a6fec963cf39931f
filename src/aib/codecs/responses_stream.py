"""The Responses API's streaming events, written from the internal stream of OpenAI chunks.

Sequence: ``response.created``, ``response.in_progress``; for text ``response.output_item.added``
(a message), ``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``; for
each tool call ``response.output_item.added`` (a ``function_call``),
``response.function_call_arguments.delta``..., ``response.function_call_arguments.done``,
``response.output_item.done``; then ``response.completed`` (``response.incomplete`` when the token
limit was hit) with the whole Response. Every event is named and numbered (``sequence_number``); no
``[DONE]`` follows, as in OpenAI's own streams. A broken stream ends with ``error`` and
``response.failed``.
"""

from __future__ import annotations

from typing import Any

import orjson

from aib.codecs.common import JsonObj, index_of, sub
from aib.codecs.responses import call_item, message_item, response_object, status_of, usage_from_openai

_DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":"%s",'
    b'"output_index":%d,"content_index":0,"delta":%s,"logprobs":[],"sequence_number":%d}\n\n'
)
_ARGS = (
    b'event: response.function_call_arguments.delta\ndata: {"type":"response.function_call_arguments.delta",'
    b'"item_id":"%s","output_index":%d,"delta":%s,"sequence_number":%d}\n\n'
)


class ResponseStreamEncoder:
    """OpenAI chunks -> Responses events, for one streamed answer."""

    __slots__ = (
        "_calls",
        "_created",
        "_echo",
        "_finish",
        "_model",
        "_msg",
        "_open",
        "_output",
        "_rid",
        "_seq",
        "_text",
        "_usage",
    )

    def __init__(self, model: str, rid: str, created: int, echo: JsonObj) -> None:
        self._model = model
        self._rid = rid
        self._created = created
        self._echo = echo
        self._seq = 0
        self._output: list[JsonObj] = []  # finished items
        self._msg: bytes | None = None  # id of the open message item
        self._text: list[str] = []
        self._calls: dict[int, JsonObj] = {}  # OpenAI tool-call index -> its item (arguments growing)
        self._open: int | None = None  # tool-call index whose item is open
        self._finish: Any = None
        self._usage: Any = None

    def _event(self, obj: JsonObj) -> bytes:
        obj["sequence_number"] = self._seq
        self._seq += 1
        kind: str = obj["type"]
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    def _response(
        self,
        status: str,
        usage: JsonObj | None = None,
        incomplete: JsonObj | None = None,
        error: JsonObj | None = None,
    ) -> JsonObj:
        return response_object(
            f"resp_{self._rid}",
            self._created,
            self._model,
            self._echo,
            status,
            list(self._output),
            usage,
            incomplete,
            error,
        )

    def start(self) -> bytes:
        return self._event(
            {"type": "response.created", "response": self._response("in_progress")}
        ) + self._event({"type": "response.in_progress", "response": self._response("in_progress")})

    def chunk(self, c: JsonObj) -> bytes:
        if c.get("usage"):
            self._usage = c["usage"]
        choices = c.get("choices")
        if not choices:
            return b""
        choice = choices[0]
        delta = choice.get("delta")
        out = b""
        if delta:
            text = delta.get("content")
            if text:
                if self._msg is None:
                    out = self._close_call() + self._open_message()
                self._text.append(text)
                out += _DELTA % (self._msg, len(self._output), orjson.dumps(text), self._seq)
                self._seq += 1
            calls = delta.get("tool_calls")
            if calls:
                out += self._tool_deltas(calls)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        return out

    def _open_message(self) -> bytes:
        self._msg = f"msg_{self._rid}".encode()
        index = len(self._output)
        item = message_item(self._msg.decode(), "", "in_progress")
        item["content"] = []
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return self._event(
            {"type": "response.output_item.added", "output_index": index, "item": item}
        ) + self._event(
            {
                "type": "response.content_part.added",
                "item_id": self._msg.decode(),
                "output_index": index,
                "content_index": 0,
                "part": part,
            }
        )

    def _close_message(self) -> bytes:
        if self._msg is None:
            return b""
        item_id, index, text = self._msg.decode(), len(self._output), "".join(self._text)
        item = message_item(item_id, text)
        self._msg = None
        self._output.append(item)
        part = item["content"][0]
        return (
            self._event(
                {
                    "type": "response.output_text.done",
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                }
            )
            + self._event(
                {
                    "type": "response.content_part.done",
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "part": part,
                }
            )
            + self._event({"type": "response.output_item.done", "output_index": index, "item": item})
        )

    def _tool_deltas(self, calls: Any) -> bytes:
        out = b""
        for frag in calls:
            if not isinstance(frag, dict):
                continue
            idx = index_of(frag, len(self._calls))
            fn = sub(frag, "function")
            item = self._calls.get(idx)
            if item is None:
                out += self._close_message() + self._close_call()
                n = len(self._calls)
                call_id = frag.get("id") or f"call_{self._rid}_{n}"
                item = self._calls[idx] = call_item(
                    f"fc_{self._rid}_{n}", call_id, str(fn.get("name") or ""), "", "in_progress"
                )
                self._open = idx
                out += self._event(
                    {
                        "type": "response.output_item.added",
                        "output_index": len(self._output),
                        "item": dict(item),
                    }
                )
            args = fn.get("arguments")
            if args:
                item["arguments"] += args
                if self._open == idx:
                    out += _ARGS % (item["id"].encode(), len(self._output), orjson.dumps(args), self._seq)
                    self._seq += 1
        return out

    def _close_call(self) -> bytes:
        if self._open is None:
            return b""
        item = self._calls[self._open]
        self._open = None
        index = len(self._output)
        item["status"] = "completed"
        self._output.append(item)
        return self._event(
            {
                "type": "response.function_call_arguments.done",
                "item_id": item["id"],
                "output_index": index,
                "name": item["name"],
                "arguments": item["arguments"],
            }
        ) + self._event({"type": "response.output_item.done", "output_index": index, "item": item})

    def done(self) -> bytes:
        out = self._close_message() + self._close_call()
        status, incomplete = status_of(self._finish)
        response = self._response(status, usage_from_openai(self._usage), incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event({"type": kind, "response": response})

    def error(self, status: int, err: Any) -> bytes:
        text = err.get("message") if isinstance(err, dict) else None
        message = str(text or f"HTTP {status}")
        code = err.get("code") if isinstance(err, dict) else None
        failed = self._response("failed", error={"code": "server_error", "message": message})
        return self._event({"type": "error", "code": code, "message": message, "param": None}) + self._event(
            {"type": "response.failed", "response": failed}
        )
