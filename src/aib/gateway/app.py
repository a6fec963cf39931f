"""The native engine: a plain ASGI application (no framework on the request path).

``create_app(plan, settings)`` builds everything; nothing happens at import. State lives on the
:class:`Gateway` object: the current plan (one reference, swapped whole by discovery and reloads),
runtime state (health, breakers, balancer counters), the upstream pool and the observers.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from aib.config.load import LoadedConfig
from aib.config.plan import RoutingPlan
from aib.doors.base import Door
from aib.gateway.errors import GatewayError, envelope, model_not_found
from aib.gateway.explain import explain_live
from aib.gateway.health import HealthMonitor
from aib.gateway.proxy import ClientGone, Proxy, parse_request
from aib.gateway.settings import GatewaySettings
from aib.gateway.signals import SignalMonitor
from aib.gateway.upstream import UpstreamPool
from aib.observe.records import Observer, RequestRecord
from aib.routing.affinity import MAX_SESSION_CHARS, AffinityKey
from aib.routing.state import RuntimeState

log = logging.getLogger("aib.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[["Gateway", Scope, Receive, Send], Awaitable[None]]

PROXIED = ("chat/completions", "completions", "embeddings")
JSON = b"application/json"


class Gateway:
    def __init__(
        self,
        plan: RoutingPlan,
        settings: GatewaySettings,
        config: LoadedConfig | None = None,
        observers: list[Observer] | None = None,
    ) -> None:
        self.settings = settings
        self.base_plan = plan  # as compiled from the files, before discovery
        self.plan = plan  # what requests read: base plan + discovered models
        self.config = config
        self.state = RuntimeState()
        if config is not None:
            b = config.mappings.defaults.breaker
            self.state.configure_breakers(b.failure_threshold, b.cooldown_s)
        self.pool = UpstreamPool()
        self.proxy = Proxy(self.state, self.pool)
        self.observers: list[Observer] = list(observers or [])
        self.on_startup: list[Callable[[], object]] = []  # run at startup (config watcher, SIGHUP handler)
        self.on_shutdown: list[Callable[[], object]] = []  # run last at shutdown (flush the request log)
        self.on_reload: list[Callable[[str], None]] = []  # told "success" or "failure" after each reload
        self.keep_bodies = False  # put the request body on the record (request-log body logging)
        self.health: HealthMonitor | None = None
        self.signals: SignalMonitor | None = None  # backend signals, polled with the health checks
        self.worker: dict[str, int] | None = None  # {"index", "count", "pid"} under `aib serve --workers N`
        self.inflight = 0
        self.ready = False
        self._rid_prefix = os.urandom(10).hex()
        self._rid_counter = itertools.count(1)
        self._models_cache: tuple[int, bytes] | None = None
        # what /v1/models lists; None: the plan's public models (an engine in front of another
        # router, like the LiteLLM front, lists the real configuration's names instead)
        self.catalog: Callable[[], list[tuple[str, str]]] | None = None
        self._routes: dict[str, dict[str, Handler]] = {}
        # path -> (endpoint, front door; None: OpenAI), served before any other lookup
        self._proxied: dict[str, tuple[str, Door | None]] = {}
        for ep in PROXIED:
            for prefix in ("/v1/", "/"):
                self.add_door(prefix + ep, ep, None)
        for prefix in ("/v1", ""):
            self._routes[prefix + "/models"] = {"GET": Gateway.models}
        self._routes["/health"] = {"GET": Gateway.health_full}
        self._routes["/health/live"] = {"GET": Gateway.health_live}
        self._routes["/health/ready"] = {"GET": Gateway.health_ready}
        self._routes["/admin/route"] = {"GET": Gateway.admin_route}

    def add_route(
        self, path: str, method: str, handler: Callable[[Scope, Receive, Send], Awaitable[None]]
    ) -> None:
        """Serve ``method path`` with a plain ASGI callable (used by /metrics, /admin/reload, ...)."""

        async def call(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
            await handler(scope, receive, send)

        self._routes.setdefault(path, {})[method.upper()] = call

    def add_door(self, path: str, endpoint: str, door: Door | None) -> None:
        """Serve ``POST path`` as a request to ``endpoint`` (chat/completions, completions, embeddings)
        spoken through ``door`` (:mod:`aib.doors`; None: the OpenAI API itself)."""
        self._proxied[path] = (endpoint, door)
        self._routes.setdefault(path, {})["POST"] = _make_proxy_handler(endpoint, door)

    # ------------------------------------------------------------------ plan

    def set_plan(self, plan: RoutingPlan) -> None:
        """Swap the plan in one step. Requests in flight keep the reference they started with."""
        self.base_plan = plan
        discovered = {n: h.models for n, h in self.state.health.items() if h.models}
        self.plan = plan.with_discovered(discovered) if discovered else plan
        self.pool.retain(set(plan.providers), self.settings.drain_timeout_s)
        self.pool.forget_headers()
        if self.health is not None:
            self.health.sync()
        if self.signals is not None:
            self.signals.sync()

    def _discovered(self, discovered: dict[str, tuple[str, ...]]) -> None:
        self.plan = self.base_plan.with_discovered(discovered)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            door = self._proxied.get(scope["path"])
            if door is not None and scope["method"] == "POST":  # the request path: no more dispatch
                await self.proxy_request(door[0], scope, receive, send, door[1])
            else:
                await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # pragma: no cover - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        if self.settings.health_checks:
            self.health = HealthMonitor(lambda: self.base_plan, self._discovered, self.state, self.pool)
            self.health.sync()
            asyncio.get_running_loop().create_task(self._first_probe())
            self.signals = SignalMonitor(lambda: self.base_plan, self.state, self.pool)
            self.signals.sync()
        for hook in self.on_startup:
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        self.ready = True

    async def _first_probe(self) -> None:
        assert self.health is not None
        await self.health.probe_all()
        down = {n: h.last_error for n, h in self.state.health.items() if h.healthy is False}
        total = len(self.state.health)
        if down:
            log.warning(
                "%d of %d providers are down: %s. `make demo` starts a working local setup; "
                "`aib doctor` checks everything.",
                len(down),
                total,
                "; ".join(f"{n} ({e})" for n, e in down.items()),
            )
        else:
            log.info("all %d providers are up", total)

    async def shutdown(self) -> None:
        self.ready = False
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.inflight and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a counter, bounded
            await asyncio.sleep(0.05)
        if self.health is not None:
            await self.health.close()
        if self.signals is not None:
            await self.signals.close()
        await self.pool.close()
        for hook in self.on_shutdown:
            try:
                result = hook()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("shutdown hook %r failed", hook)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        methods = self._routes.get(path)
        if methods is None:
            if path.startswith(("/v1/models/", "/models/")):
                if scope["method"] == "GET":
                    await self.model_detail(scope, path.split("/models/", 1)[1], send)
                else:
                    err = GatewayError(
                        405,
                        f"Method {scope['method']} is not allowed on {path}; use GET.",
                        "invalid_request_error",
                        "method_not_allowed",
                    )
                    err.headers["allow"] = "GET"
                    await send_error(send, err)
                return
            await send_error(
                send,
                GatewayError(
                    404,
                    f"Unknown path {path!r}. See /v1/models, /v1/chat/completions, /health.",
                    "invalid_request_error",
                    "unknown_url",
                ),
            )
            return
        handler = methods.get(scope["method"])
        if handler is None:
            allow = ", ".join(sorted(methods))
            err = GatewayError(
                405,
                f"Method {scope['method']} is not allowed on {path}; use {allow}.",
                "invalid_request_error",
                "method_not_allowed",
            )
            err.headers["allow"] = allow
            await send_error(send, err)
            return
        await handler(self, scope, receive, send)

    # ------------------------------------------------------------------ handlers

    async def proxy_request(
        self, endpoint: str, scope: Scope, receive: Receive, send: Send, door: Door | None = None
    ) -> None:
        plan = self.plan
        exchange = door.open(scope, send) if door is not None else None
        if exchange is not None:  # every answer, errors included, in the door's own shape
            send = exchange.send
        rid = declared = session = None
        for k, v in scope["headers"]:  # one pass for the headers the gateway reads
            if k == b"x-request-id":
                rid = v.decode("latin-1")
            elif k == b"content-length":
                declared = v
            elif k == b"x-session-id":  # prefix_affinity's key, when the client gives one
                session = v[:MAX_SESSION_CHARS].decode("latin-1")
        if not rid or len(rid) > 128 or not rid.isascii() or not rid.isprintable():
            # unique and cheaper than uuid4; 32 hex digits because llama-cpp-python answers 400 to an
            # x-request-id that does not parse as a UUID
            rid = f"{self._rid_prefix}{next(self._rid_counter):012x}"
        record = RequestRecord(request_id=rid, endpoint=endpoint, model="", started_at=time.time())
        t0 = time.perf_counter()
        self.inflight += 1
        try:
            body = await read_body(scope, receive, self.settings.max_body_bytes, declared)
            if self.keep_bodies:
                record.request_body = body
            if exchange is None:
                payload, record.model, record.stream = parse_request(endpoint, body)
            else:
                payload, record.model, record.stream = exchange.decode(body)
            ext = scope.get("extensions")
            notify = ext.get("aib.on_disconnect") if ext else None
            await self.proxy.handle(plan, endpoint, payload, record, receive, send, notify, session)
        except GatewayError as err:
            record.status, record.error, record.error_code = err.status, err.message, err.code
            await send_error(send, err, rid)
        except ClientGone:
            record.client_disconnected = True
        except Exception as exc:  # a bug: answer in the envelope, log the stack, never show it
            log.exception("internal error on request %s", rid)
            record.status, record.error, record.error_code = (
                500,
                f"internal error: {type(exc).__name__}",
                "internal_error",
            )
            if record.ttfb_s is None:
                await send_error(
                    send,
                    GatewayError(
                        500,
                        f"Internal gateway error ({type(exc).__name__}); request id {rid}.",
                        "server_error",
                        "internal_error",
                    ),
                    rid,
                )
        finally:
            self.inflight -= 1
            record.total_s = time.perf_counter() - t0
            for obs in self.observers:
                obs.request_done(record)

    def _public_models(self, plan: RoutingPlan) -> list[tuple[str, str]]:
        return self.catalog() if self.catalog is not None else plan.public_models()

    def models_for(self, scope: Scope) -> list[tuple[str, str]]:
        """(model id, owned_by) of every name the client of ``scope`` may use: what ``/v1/models``
        and every door's model list show."""
        return self._public_models(self.plan)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        plan = self.plan
        cached = self._models_cache
        key = id(plan) if self.catalog is None else -1  # a catalog can change without a new plan
        if cached is None or cached[0] != key or key == -1:
            created = int(self.state.started_at)
            data = [
                {"id": m, "object": "model", "created": created, "owned_by": owner}
                for m, owner in self._public_models(plan)
            ]
            cached = self._models_cache = (key, orjson.dumps({"object": "list", "data": data}))
        await send_json(send, 200, cached[1])

    async def model_detail(self, scope: Scope, model: str, send: Send) -> None:
        plan = self.plan
        for m, owner in self._public_models(plan):
            if m == model:
                body = {"id": m, "object": "model", "created": int(self.state.started_at), "owned_by": owner}
                await send_json(send, 200, orjson.dumps(body))
                return
        names = [m for m, _ in self._public_models(plan)]
        close = (
            plan.suggestions(model) if self.catalog is None else difflib.get_close_matches(model, names, n=3)
        )
        await send_error(send, model_not_found(model, close))

    async def health_full(self, scope: Scope, receive: Receive, send: Send) -> None:
        plan = self.plan
        if self.health is None:
            report: dict[str, Any] = {
                "status": "unknown",
                "healthy_providers": 0,
                "providers": {},
                "plan_version": plan.version,
                "health_checks": False,
            }
            status = 200
        else:
            report = self.health.report(plan)
            status = 200 if report["healthy_providers"] > 0 else 503
            if self.signals is not None:  # what each server says about its load, with its age
                for name, sig in self.signals.report(plan).items():
                    report["providers"][name]["signals"] = sig
        report["inflight"] = self.inflight
        report["uptime_s"] = round(time.time() - self.state.started_at, 1)
        if self.worker is not None:  # health, breakers and in-flight are this worker's own
            report["worker"] = self.worker
        await send_json(send, status, orjson.dumps(report))

    async def health_live(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, b'{"status":"alive"}')

    async def health_ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        ok = self.ready
        await send_json(
            send,
            200 if ok else 503,
            orjson.dumps({"status": "ready" if ok else "not_ready", "plan_version": self.plan.version}),
        )

    async def admin_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.check_admin(scope, send):
            return
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        model = (qs.get("model") or [""])[0]
        if not model:
            await send_error(
                send,
                GatewayError(
                    400,
                    "Give the model to explain: /admin/route?model=NAME",
                    "invalid_request_error",
                    "missing_required_parameter",
                    "model",
                ),
            )
            return
        plan = self.plan
        res = plan.resolve(model)
        if res is None:
            await send_error(send, model_not_found(model, plan.suggestions(model)))
            return
        body = res.explain()
        # the live ranking: health, breakers, discovery, backend signals, load, affinity
        session = (qs.get("session") or [""])[0][:MAX_SESSION_CHARS] or None
        key = AffinityKey("chat/completions", {}, session) if session else None
        body["live"] = explain_live(plan, res, self.state, key)
        await send_json(send, 200, orjson.dumps(body))

    async def check_admin(self, scope: Scope, send: Send) -> bool:
        key = self.settings.admin_key
        if key is None:
            return True
        given = _header(scope, b"authorization") or ""
        given = given.removeprefix("Bearer ").strip() or (_header(scope, b"x-admin-key") or "")
        if given == key:
            return True
        await send_error(
            send,
            GatewayError(
                401,
                f"This admin endpoint needs the admin key (set in ${self.settings.admin_key_env}) as a bearer token.",
                "authentication_error",
                "invalid_admin_key",
            ),
        )
        return False


def _make_proxy_handler(endpoint: str, door: Door | None = None) -> Handler:
    async def handler(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
        await gw.proxy_request(endpoint, scope, receive, send, door)

    return handler


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int, declared: bytes | None = b"?") -> bytes:
    """The whole body (at most ``limit`` bytes). ``declared``: the Content-Length header when the
    caller already looked it up (None: there is none); by default it is looked up here."""
    if declared == b"?":
        h = _header(scope, b"content-length")
        declared = h.encode("latin-1") if h is not None else None
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone()
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not msg.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"The request body is larger than the limit of {limit} bytes (AIB_MAX_BODY_BYTES).",
        "invalid_request_error",
        "request_too_large",
    )


async def send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: GatewayError, request_id: str | None = None) -> None:
    extra = [(k.encode(), v.encode()) for k, v in err.headers.items()]
    if request_id:
        extra.append((b"x-request-id", request_id.encode()))
    with contextlib.suppress(OSError):  # the client is gone; nothing to tell it
        await send_json(send, err.status, err.body(), extra)


def create_app(
    plan: RoutingPlan,
    settings: GatewaySettings | None = None,
    config: LoadedConfig | None = None,
    observers: list[Observer] | None = None,
) -> Gateway:
    """Build the ASGI application. Nothing runs until the server sends lifespan startup."""
    return Gateway(plan, settings or GatewaySettings(), config, observers)


__all__ = ["Gateway", "create_app", "envelope"]
