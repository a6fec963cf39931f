"""The native engine: a plain ASGI application (no framework on the request path).

``create_app(plan, settings)`` builds everything; nothing happens at import. State lives on the
:class:`Gateway` object: the current plan (one reference, swapped whole by discovery and reloads),
runtime state (health, breakers, balancer counters), the upstream pool and the observers.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from aib.auth.gate import AuthError, bearer
from aib.auth.keys import ClientKey
from aib.auth.store import default_path
from aib.config.load import LoadedConfig
from aib.config.plan import RoutingPlan
from aib.doors.base import Door
from aib.doors.install import install_doors
from aib.gateway.cache_admin import install_cache_admin
from aib.gateway.errors import GatewayError, envelope, model_not_found
from aib.gateway.explain import explain_live
from aib.gateway.guard import admin_verdict, exposure_problem
from aib.gateway.health import HealthMonitor
from aib.gateway.key_admin import install_key_admin
from aib.gateway.proxy import ClientGone, Proxy, check_model_length, parse_request
from aib.gateway.respond import JSON, Receive, Scope, Send, read_body, send_error, send_json
from aib.gateway.settings import GatewaySettings
from aib.gateway.signals import SignalMonitor
from aib.gateway.stores import build_stores, restart_needed
from aib.gateway.upstream import UpstreamPool
from aib.limits import LIMIT_CODES
from aib.limits.limiter import LimitExceeded, Ticket
from aib.limits.slots import Slots
from aib.observe.records import Observer, RequestRecord
from aib.routing.affinity import MAX_SESSION_CHARS, AffinityKey
from aib.routing.state import RuntimeState
from aib.secrets import Scrubber, env_values, proxy_secrets

log = logging.getLogger("aib.gateway")

OPEN_PATHS = frozenset({"/health/live", "/health/ready"})  # for load balancers: never a key
Handler = Callable[["Gateway", Scope, Receive, Send], Awaitable[None]]

PROXIED = ("chat/completions", "completions", "embeddings")


class Gateway:
    def __init__(
        self,
        plan: RoutingPlan,
        settings: GatewaySettings,
        config: LoadedConfig | None = None,
        observers: list[Observer] | None = None,
        slots: Slots | None = None,
    ) -> None:
        self.settings = settings
        self.base_plan = plan  # as compiled from the files, before discovery
        self.plan = plan  # what requests read: base plan + discovered models
        self.config = config
        self.state = RuntimeState()
        if config is not None:
            b = config.mappings.defaults.breaker
            self.state.configure_breakers(b.failure_threshold, b.cooldown_s)
        self.pool = UpstreamPool(settings.upstream_max_head_bytes, settings.upstream_max_headers)
        # secret values masked in everything the gateway emits (aib.secrets): provider keys, the
        # admin key, and what other parts add to `extra_secrets` (the SDK adapter's token)
        self.extra_secrets: list[str] = []
        self.scrubber = Scrubber()
        self.proxy = Proxy(self.state, self.pool, self.scrubber)
        # who and may: client keys, model access, limits (aib.auth, aib.limits); the response cache
        # (aib.cache); in SQLite and memory, or in Redis shared by replicas (aib.gateway.stores)
        self.link, self.gate, self.cache = build_stores(
            plan, settings.keys_db or default_path(None), slots, lambda: self.settings.admin_key
        )
        self.refresh_secrets()
        self.observers: list[Observer] = list(observers or [])
        self.on_startup: list[Callable[[], object]] = []  # run at startup (config watcher, SIGHUP handler)
        self.on_shutdown: list[Callable[[], object]] = []  # run last at shutdown (flush the request log)
        self.on_reload: list[Callable[[str], None]] = []  # told "success" or "failure" after each reload
        self.on_cache_flush: list[Callable[[str | None], None]] = []  # tell other workers (memory cache)
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
        self._prefixed: list[tuple[str, Handler]] = []  # path prefixes (/admin/keys/ID/...)
        # (path prefix, status + OpenAI error object -> body): the error shape of another API, for the
        # answers the dispatcher gives before a door's own handler runs (a missing key, a 404)
        self.error_shapes: list[tuple[str, Callable[[int, dict[str, Any]], bytes]]] = []
        # path -> (endpoint, front door; None: OpenAI), served before any other lookup
        self._proxied: dict[str, tuple[str, Door | None]] = {}
        for ep in PROXIED:
            for prefix in ("/v1/", "/"):
                self.add_door(prefix + ep, ep, None)
        install_doors(self)  # Anthropic Messages, OpenAI Responses, Ollama (aib.doors)
        for prefix in ("/v1", ""):
            self._routes[prefix + "/models"] = {"GET": Gateway.models}
        self._routes["/health"] = {"GET": Gateway.health_full}
        self._routes["/health/live"] = {"GET": Gateway.health_live}
        self._routes["/health/ready"] = {"GET": Gateway.health_ready}
        self._routes["/admin/route"] = {"GET": Gateway.admin_route}
        install_key_admin(self)
        install_cache_admin(self)

    def add_route(
        self, path: str, method: str, handler: Callable[[Scope, Receive, Send], Awaitable[None]]
    ) -> None:
        """Serve ``method path`` with a plain ASGI callable (used by /metrics, /admin/reload, ...)."""

        async def call(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
            await handler(scope, receive, send)

        self._routes.setdefault(path, {})[method.upper()] = call

    def add_prefix_route(
        self, prefix: str, handler: Callable[[Scope, Receive, Send], Awaitable[None]]
    ) -> None:
        """Serve every path under ``prefix`` (any method) with a plain ASGI callable."""

        async def call(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
            await handler(scope, receive, send)

        self._prefixed.append((prefix, call))

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
        self.refresh_secrets()
        if self.health is not None:
            self.health.sync()
        if self.signals is not None:
            self.signals.sync()

    def accept_plan(self, plan: RoutingPlan) -> None:
        """Raise ValueError when this gateway cannot serve ``plan`` safely: ``auth.mode: none`` on an
        exposed listener, or a key store that does not open. Called before a plan is swapped in."""
        s = self.settings
        if not s.insecure_open:
            problem = exposure_problem(s.host, plan.auth.mode, s.admin_key is not None)
            if problem:
                raise ValueError(problem)
        problem = restart_needed(self.base_plan, plan)
        if problem:
            raise ValueError(problem)
        if plan.auth.mode == "keys":
            try:
                self.gate.open()
            except Exception as exc:
                if self.gate.remote is None:
                    raise ValueError(
                        f"auth.mode keys: the key store {self.gate.store_name} does not open: {exc}"
                    ) from None
                # Redis: serve once the keys are read (the poller retries; /health/ready says 503)
                log.warning("key store %s: %s; not ready until the keys are read", self.gate.store_name, exc)

    def refresh_secrets(self) -> None:
        """Read the secret values again: provider keys, the admin key, proxy credentials, Redis's password."""
        names = [p.api_key_env for p in self.base_plan.providers.values()]
        names.append(self.settings.admin_key_env)
        if self.base_plan.redis is not None:
            names.append(self.base_plan.redis.password_env)
        self.scrubber.update([*env_values(names), *proxy_secrets(), *self.extra_secrets])
        self.gate.forget_tokens()

    def warnings(self) -> list[str]:
        """What /health says is unsafe about how this gateway runs."""
        s = self.settings
        if s.insecure_open and exposure_problem(s.host, self.plan.auth.mode, s.admin_key is not None):
            return [
                f"--insecure-open: listening on {s.host} with auth.mode {self.plan.auth.mode}"
                f"{'' if s.admin_key else ' and no admin key'}: anyone who reaches this port can use it"
            ]
        return []

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
        if self.link is not None:
            await self.link.start()
        self.accept_plan(self.base_plan)
        for w in self.warnings():
            log.warning("%s", w)
        if self.gate.store is not None:
            self.gate.start()
        if self.settings.health_checks:
            self.health = HealthMonitor(
                lambda: self.base_plan, self._discovered, self.state, self.pool, self.scrubber.bytes
            )
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
        await self.gate.close()
        if self.signals is not None:
            await self.signals.close()
        await self.cache.close()
        if self.link is not None:
            await self.link.close()
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
        # one rule for every admin route (new ones too), the detailed /health and /metrics
        if path == "/health" or path == "/metrics" or path.startswith("/admin"):
            if not await self.check_admin(scope, send):
                return
        elif self.plan.auth.mode == "keys" and path not in OPEN_PATHS:
            try:  # with keys on, nothing else answers without one (not even "unknown path")
                self.client(scope)
            except AuthError as denied:
                await self.send_shaped(scope, send, auth_error(denied))
                return
        methods = self._routes.get(path)
        if methods is None:
            for prefix, serve in self._prefixed:
                if path.startswith(prefix):
                    await serve(self, scope, receive, send)
                    return
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
            await self.send_shaped(
                scope,
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
        rid = declared = token = session = control = None
        for k, v in scope["headers"]:  # one pass for every header the gateway reads
            if k == b"x-request-id":
                rid = v.decode("latin-1")
            elif k == b"content-length":
                declared = v
            elif k == b"authorization":
                token = bearer(v)
            elif (k == b"x-api-key" or k == b"api-key") and token is None:
                token = v.strip()
            elif k == b"x-session-id":  # prefix_affinity's key, when the client gives one
                session = v[:MAX_SESSION_CHARS].decode("latin-1")
            elif k == b"cache-control":
                control = v
        if not rid or len(rid) > 128 or not rid.isascii() or not rid.isprintable():
            # unique and cheaper than uuid4; 32 hex digits because llama-cpp-python answers 400 to an
            # x-request-id that does not parse as a UUID
            rid = f"{self._rid_prefix}{next(self._rid_counter):012x}"
        record = RequestRecord(request_id=rid, endpoint=endpoint, model="", started_at=time.time())
        if door is not None:
            record.door = door.name
        t0 = time.perf_counter()
        self.inflight += 1
        key: ClientKey | None = None
        ticket: Ticket | None = None
        try:
            if plan.auth.mode == "keys":  # who: before the body is even read
                try:
                    key = self.gate.identify(token)
                except AuthError:  # a key made a moment ago? (reads the store, refusals only)
                    key = await self.gate.identify_fresh(token)
                record.key_name = key.name
            body = await read_body(scope, receive, self.settings.max_body_bytes, declared)
            if self.keep_bodies:
                record.request_body = body
            if exchange is None:
                payload, record.model, record.stream = parse_request(
                    endpoint, body, self.settings.max_model_chars
                )
            else:
                payload, model, record.stream = exchange.decode(body)
                check_model_length(model, self.settings.max_model_chars)
                record.model = model
            if self.scrubber.values:  # a secret pasted as a model name never reaches a log
                record.model = self.scrubber.text(record.model)
            if key is not None:  # may: this model, within these limits (here, or in Redis)
                if key.models:
                    self.gate.check_model(key, record.model, plan)
                if key.limited:
                    reserve = plan.auth.reserve_tokens
                    if self.gate.remote is None:
                        ticket = self.gate.admit(key, payload, len(body), endpoint, reserve)
                    else:
                        ticket = await self.gate.admit_shared(key, payload, len(body), endpoint, reserve)
                    if ticket is not None and ticket.headers:
                        send = _adding_headers(send, ticket.headers)
            # cache: this exact request answered before? (only routes that cache look)
            look = (
                await self.cache.lookup(plan, endpoint, payload, record, key, control)
                if plan.caches
                else None
            )
            if look is not None and look.entry is not None:  # a hit: the stored answer, no upstream
                await self.cache.replay(look, record, send)
            else:  # route: resolve, balance, attempt, fall back; the answer streams back
                if look is not None:  # x-aib-cache on the answer, and a copy to store
                    send = look.wrap(send, self.cache.max_entry)
                ext = scope.get("extensions")
                notify = ext.get("aib.on_disconnect") if ext else None
                await self.proxy.handle(plan, endpoint, payload, record, receive, send, notify, session)
                if look is not None:
                    self.cache.store(look, record)  # a complete, successful answer only
        except GatewayError as err:
            if err.code == "model_not_found" and key is not None and key.models:
                err = model_not_found(record.model, self._suggest(key, record.model, plan))
            record.status, record.error, record.error_code = err.status, err.message, err.code
            await send_error(send, err, rid)
        except AuthError as err:
            record.status, record.error, record.error_code = err.status, err.message, err.code
            await send_error(send, auth_error(err), rid)
        except LimitExceeded as exc:  # 429; 503 when Redis is down under on_redis_error: deny
            record.status, record.error, record.error_code = exc.status, exc.message, exc.code
            kind = "rate_limit_exceeded" if exc.status == 429 else "service_unavailable"
            await send_error(send, GatewayError(exc.status, exc.message, kind, exc.code), rid, exc.headers)
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
            if key is not None:  # settle: the real usage instead of the reservation
                self.gate.settle(
                    key,
                    ticket,
                    record.status,
                    record.prompt_tokens,
                    record.completion_tokens,
                    record.status == 429 and ticket is None and record.error_code in LIMIT_CODES,
                )
            record.total_s = time.perf_counter() - t0
            for obs in self.observers:
                obs.request_done(record)

    def _public_models(self, plan: RoutingPlan) -> list[tuple[str, str]]:
        return self.catalog() if self.catalog is not None else plan.public_models()

    def client(self, scope: Scope) -> ClientKey | None:
        """The client key of a request that is not on the request path (model lists), or None when
        ``auth.mode`` is none. Raises :class:`AuthError` like the request path."""
        if self.plan.auth.mode != "keys":
            return None
        token = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                token = bearer(v)
            elif (k == b"x-api-key" or k == b"api-key") and token is None:
                token = v.strip()
        return self.gate.identify(token)

    def models_for(self, scope: Scope) -> list[tuple[str, str]]:
        """(model id, owned_by) of every name the client of ``scope`` may use: what ``/v1/models``
        and every door's model list show. Raises :class:`AuthError` for a request without a valid key
        when keys are on."""
        key = self.client(scope)
        models = self._public_models(self.plan)
        if key is None or not key.models:
            return models
        plan = self.plan
        return [(m, owner) for m, owner in models if self.gate.allows(key, m, plan)]

    def _suggest(self, key: ClientKey, model: str, plan: RoutingPlan) -> list[str]:
        """Names close to ``model`` that ``key`` may use (a 404 never hints at others)."""
        return [n for n in plan.suggestions(model, n=20) if self.gate.allows(key, n, plan)][:3]

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            key = self.client(scope)
        except AuthError as err:
            await send_error(send, auth_error(err))
            return
        if key is not None and key.models:  # this key's models only
            created = int(self.state.started_at)
            data = [
                {"id": m, "object": "model", "created": created, "owned_by": owner}
                for m, owner in self.models_for(scope)
            ]
            await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))
            return
        plan = self.plan
        cached = self._models_cache
        cache_key = id(plan) if self.catalog is None else -1  # a catalog can change without a new plan
        if cached is None or cached[0] != cache_key or cache_key == -1:
            created = int(self.state.started_at)
            data = [
                {"id": m, "object": "model", "created": created, "owned_by": owner}
                for m, owner in self._public_models(plan)
            ]
            cached = self._models_cache = (cache_key, orjson.dumps({"object": "list", "data": data}))
        await send_json(send, 200, cached[1])

    async def model_detail(self, scope: Scope, model: str, send: Send) -> None:
        plan = self.plan
        model = self.scrubber.text(model)
        try:
            key = self.client(scope)
        except AuthError as err:
            await send_error(send, auth_error(err))
            return
        if key is not None and key.models and not self.gate.allows(key, model, plan):
            await send_error(
                send,
                auth_error(
                    AuthError(
                        403, f"This API key may not use the model {model!r}.", "model_not_allowed", "model"
                    )
                ),
            )
            return
        for m, owner in self._public_models(plan):
            if m == model:
                body = {"id": m, "object": "model", "created": int(self.state.started_at), "owned_by": owner}
                await send_json(send, 200, orjson.dumps(body))
                return
        if key is not None and key.models:
            close = self._suggest(key, model, plan)
        else:
            names = [m for m, _ in self._public_models(plan)]
            close = (
                plan.suggestions(model)
                if self.catalog is None
                else difflib.get_close_matches(model, names, n=3)
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
            # degraded providers still take requests (a trial, or every request when nothing else can)
            status = 200 if report["healthy_providers"] + report["degraded_providers"] > 0 else 503
            if self.signals is not None:  # what each server says about its load, with its age
                for name, sig in self.signals.report(plan).items():
                    report["providers"][name]["signals"] = sig
        report["inflight"] = self.inflight
        report["uptime_s"] = round(time.time() - self.state.started_at, 1)
        report["auth"] = {
            "mode": plan.auth.mode,
            "store": plan.auth.store,
            "keys": len(self.gate.keys) if self.gate.store else None,
        }
        report["cache"] = {"backend": self.cache.backend, "routes": plan.caches, **self.cache.counters()}
        if self.link is not None:  # per process, like health and breakers (docs/scaling.md)
            report["redis"] = self.link.describe()
        warnings = self.warnings()
        if warnings:
            report["warnings"] = warnings
        if self.worker is not None:  # health, breakers and in-flight are this worker's own
            report["worker"] = self.worker
        await send_json(send, status, orjson.dumps(report))

    async def health_live(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, b'{"status":"alive"}')

    async def health_ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        # with keys in Redis, a replica that has never read them would refuse every key: not ready
        ok = self.ready and (self.plan.auth.mode != "keys" or self.gate.generation >= 0)
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

    async def send_shaped(self, scope: Scope, send: Send, err: GatewayError) -> None:
        """``err`` in the error shape of the API its path belongs to (OpenAI's unless a door said)."""
        path = scope["path"]
        for prefix, shape in self.error_shapes:
            if path.startswith(prefix):
                body = shape(err.status, {"message": err.message, "type": err.type, "code": err.code})
                await send_error(send, err, body=body)
                return
        await send_error(send, err)

    async def check_admin(self, scope: Scope, send: Send) -> bool:
        """Whether the request may use the admin API (docs/security.md); answers 401/403 if not."""
        verdict = admin_verdict(scope, self.settings.admin_key)
        if verdict is None:
            return True
        if verdict == "remote":
            err = GatewayError(
                403,
                "The admin API answers only on loopback while no admin key is set; set "
                f"${self.settings.admin_key_env} on the gateway and send it as a bearer token.",
                "permission_error",
                "admin_loopback_only",
            )
        else:
            err = GatewayError(
                401,
                f"This endpoint needs the admin key (set in ${self.settings.admin_key_env}) as a bearer token.",
                "authentication_error",
                "invalid_admin_key",
            )
            err.headers["www-authenticate"] = 'Bearer realm="aib-admin"'
        await send_error(send, err)
        return False


def _make_proxy_handler(endpoint: str, door: Door | None = None) -> Handler:
    async def handler(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
        await gw.proxy_request(endpoint, scope, receive, send, door)

    return handler


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` with ``extra`` headers on the response head (a key's x-ratelimit-* on every answer)."""

    def wrapped(message: dict[str, Any]) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            headers = message.get("headers")
            if type(headers) is list:  # every answer the gateway makes has a fresh list: extend it
                headers.extend(extra)
            else:
                message = {**message, "headers": [*(headers or ()), *extra]}
        return send(message)

    return wrapped


def auth_error(err: AuthError) -> GatewayError:
    """401 with a ``WWW-Authenticate`` challenge, or 403, in OpenAI's envelope."""
    if err.status == 401:
        out = GatewayError(401, err.message, "invalid_request_error", err.code, err.param)
        out.headers["www-authenticate"] = 'Bearer realm="aib"'
        return out
    return GatewayError(err.status, err.message, "permission_error", err.code, err.param)


def create_app(
    plan: RoutingPlan,
    settings: GatewaySettings | None = None,
    config: LoadedConfig | None = None,
    observers: list[Observer] | None = None,
    slots: Slots | None = None,
) -> Gateway:
    """Build the ASGI application. Nothing runs until the server sends lifespan startup.
    ``slots``: where limit counters live (default: this process; shared memory under --workers)."""
    return Gateway(plan, settings or GatewaySettings(), config, observers, slots)


__all__ = [
    "JSON",
    "Gateway",
    "Receive",
    "Scope",
    "Send",
    "create_app",
    "envelope",
    "read_body",
    "send_error",
    "send_json",
]
