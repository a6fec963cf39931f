"""One error envelope for every failure the gateway answers: OpenAI's shape.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with a status that says who
is at fault: 4xx the request, 502/504 an upstream, 503 nothing available. Messages say what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson


@dataclass(slots=True)
class GatewayError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return envelope(self.message, self.type, self.code, self.param)

    def __str__(self) -> str:
        return f"{self.status} {self.code or self.type}: {self.message}"


def envelope(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def model_not_found(model: str, suggestions: list[str]) -> GatewayError:
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    return GatewayError(
        404,
        f"The model {model!r} is not configured on this gateway.{hint} "
        "GET /v1/models lists the names you can use.",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def upstream_failed(status: int, message: str, code: str = "upstream_error") -> GatewayError:
    kind = "timeout_error" if status == 504 else "upstream_error"
    return GatewayError(status, message, kind, code)
