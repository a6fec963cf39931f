"""``/admin/keys``: client keys over HTTP, the same operations as `aib keys` (admin key required:
``Gateway.http`` guards every ``/admin`` path).

| request | answer |
|---|---|
| ``GET /admin/keys`` | ``{"keys": [...]}``: every key (never a secret or a hash) |
| ``POST /admin/keys`` ``{"name", "models", "rpm", ...}`` | 201, the new key with its secret, shown once |
| ``GET /admin/keys/usage?since=7d`` | usage per key (requests, tokens, refusals, budgets) |
| ``GET /admin/keys/ID`` | one key |
| ``POST /admin/keys/ID/revoke`` (or ``DELETE /admin/keys/ID``) | the keys revoked (ID or a name) |
| ``POST /admin/keys/ID/rotate`` ``{"grace": "1h"}`` | 201, the new key; the old one ends after the grace |

A change takes effect in this process at once and in every other worker or replica that shares the
store within a second (they poll its generation).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from aib.auth.keys import parse_duration
from aib.auth.manage import created, settings_from, since_day, usage_report
from aib.gateway.errors import GatewayError, bad_request
from aib.gateway.respond import Receive, Scope, Send, read_body, send_error, send_json

if TYPE_CHECKING:
    from aib.gateway.app import Gateway

MAX_BODY = 64 * 1024


def install_key_admin(gateway: Gateway) -> None:
    admin = KeyAdmin(gateway)
    gateway.add_route("/admin/keys", "GET", admin.list)
    gateway.add_route("/admin/keys", "POST", admin.create)
    gateway.add_prefix_route("/admin/keys/", admin.one)


class KeyAdmin:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _store(self) -> Any:
        return await asyncio.to_thread(self.gateway.gate.open)

    async def _changed(self) -> None:
        await asyncio.to_thread(self.gateway.gate.reload_keys)  # this process: at once

    async def list(self, scope: Scope, receive: Receive, send: Send) -> None:
        store = await self._store()
        keys = await asyncio.to_thread(store.load)
        await send_json(send, 200, orjson.dumps({"keys": [k.public() for k in keys]}))

    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._body(scope, receive)
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise bad_request(
                    'Give the key\'s owner: {"name": "alice", ...}.', "name", "missing_required_parameter"
                )
            settings = settings_from(body)
            store = await self._store()
            key, secret = await asyncio.to_thread(lambda: store.create(name, **settings))
        except ValueError as exc:
            await send_error(send, bad_request(str(exc)))
            return
        except GatewayError as err:
            await send_error(send, err)
            return
        await self._changed()
        await send_json(send, 201, orjson.dumps(created(key, secret)))

    async def one(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/")
        parts = path[len("/admin/keys/") :].split("/")
        method = scope["method"]
        store = await self._store()
        if parts == ["usage"] and method == "GET":
            qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            try:
                since = since_day((qs.get("since") or [None])[0])
            except ValueError as exc:
                await send_error(send, bad_request(str(exc), "since"))
                return
            rows = await asyncio.to_thread(usage_report, store, since)
            await send_json(send, 200, orjson.dumps({"since": since, "keys": rows}))
            return
        ident = parts[0]
        action = parts[1] if len(parts) == 2 else None
        if len(parts) > 2 or not ident:
            await send_error(send, _unknown(path))
            return
        if (action is None and method == "DELETE") or (action == "revoke" and method == "POST"):
            revoked = await asyncio.to_thread(store.revoke, ident)
            if not revoked:
                await send_error(send, _no_key(ident))
                return
            await self._changed()
            await send_json(send, 200, orjson.dumps({"revoked": [k.public() for k in revoked]}))
        elif action == "rotate" and method == "POST":
            try:
                body = await self._body(scope, receive)
                grace = body.get("grace", 0)
                grace_s = parse_duration(grace) if isinstance(grace, str) else float(grace)
                new, secret, old = await asyncio.to_thread(store.rotate, ident, grace_s)
            except KeyError:
                await send_error(send, _no_key(ident))
                return
            except (ValueError, TypeError) as exc:
                await send_error(send, bad_request(str(exc)))
                return
            except GatewayError as err:
                await send_error(send, err)
                return
            await self._changed()
            await send_json(send, 201, orjson.dumps({**created(new, secret), "replaces": old.public()}))
        elif action is None and method == "GET":
            key = await asyncio.to_thread(store.get, ident)
            if key is None:
                await send_error(send, _no_key(ident))
                return
            day, month = await asyncio.to_thread(self.gateway.gate.usage_today, key)  # Redis: a read
            await send_json(
                send, 200, orjson.dumps({**key.public(), "tokens_today": day, "tokens_this_month": month})
            )
        else:
            wrong = GatewayError(
                405,
                f"{method} {path}: see GET /admin/keys/ID, POST .../revoke, POST .../rotate.",
                "invalid_request_error",
                "method_not_allowed",
            )
            await send_error(send, wrong)

    async def _body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        raw = await read_body(scope, receive, MAX_BODY)
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"The body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("The body must be a JSON object.", code="invalid_json")
        return body


def _no_key(ident: str) -> GatewayError:
    return GatewayError(
        404,
        f"No key with the id or name {ident!r} (GET /admin/keys lists them).",
        "invalid_request_error",
        "key_not_found",
    )


def _unknown(path: str) -> GatewayError:
    return GatewayError(
        404, f"Unknown path {path!r}. See GET /admin/keys.", "invalid_request_error", "unknown_url"
    )
