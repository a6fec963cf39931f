"""Hot reload wired into a gateway: the file watcher, SIGHUP and the admin endpoints.

    POST /admin/reload     reload from the config folder now; the answer is the reload's report
    POST /admin/rollback   {"to": ID} (optional): restore a backup's files and reload them
    GET  /admin/reloads    the last reloads, newest first (?limit=N), and where the config lives

All three need the admin key when ``$AIB_ADMIN_KEY`` is set (``Gateway.check_admin``). A report's HTTP
status follows its result: 200 applied or unchanged, 422 rejected, 409 rolled back, 500 failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from aib.gateway.app import Gateway, Receive, Scope, Send, read_body, send_error, send_json
from aib.gateway.errors import GatewayError
from aib.gateway.proxy import ClientGone
from aib.reload.backups import BackupError
from aib.reload.cluster import CLIENT_HEADER, Cluster, forward_to_leader
from aib.reload.controller import HTTP_STATUS, NoConfigDir, ReloadController, ReloadResult
from aib.reload.settings import ReloadSettings
from aib.reload.target import ReloadTarget
from aib.reload.watcher import ConfigWatcher

log = logging.getLogger("aib.reload")
MAX_ADMIN_BODY = 16 * 1024


class ReloadService:
    def __init__(
        self, gateway: Gateway, controller: ReloadController, cluster: Cluster | None = None
    ) -> None:
        self.gateway = gateway
        self.controller = controller
        self.cluster = cluster  # None: a single process; else one worker of `aib serve --workers N`
        self.watcher: ConfigWatcher | None = None
        self._signal_tasks: set[asyncio.Task[Any]] = set()
        self._sighup = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        ctl, s = self.controller, self.controller.settings
        if ctl.config_dir is None:
            log.info("config reload: off (running on the configuration shipped in the package)")
            return
        cluster = self.cluster
        if self._follower():
            await self._start_follower()
            return
        if cluster is not None:  # the leader: what it applies, every worker applies
            assert ctl.current is not None
            ctl.on_change.append(lambda cand: cluster.publish(cand.sources))
            await asyncio.to_thread(cluster.publish, ctl.current.sources)
        if s.watch:
            self.watcher = ConfigWatcher(ctl.config_dir, s.debounce_ms / 1000, ctl.files_settled)
            self.watcher.start()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            pass  # not the main thread (tests, embedded) or no SIGHUP on this platform
        how = [f"watching {ctl.config_dir} (debounce {s.debounce_ms} ms)"] if self.watcher else []
        how += ["SIGHUP"] if self._sighup else []
        log.info("config reload: %s", ", ".join([*how, "`aib reload`, POST /admin/reload"]))

    async def _start_follower(self) -> None:
        """Follow the leader: load what it published now and on each SIGHUP from the supervisor."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        await self._follow()
        log.info("config reload: following the leader worker (it watches %s)", self.controller.config_dir)

    async def _follow(self) -> None:
        assert self.cluster is not None
        src = await asyncio.to_thread(self.cluster.read_published)
        if src is not None:
            await self.controller.follow(src)

    async def stop(self) -> None:
        if self._sighup:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self.watcher is not None:
            await self.watcher.stop()
        for t in list(self._signal_tasks):
            t.cancel()
        await asyncio.gather(*self._signal_tasks, return_exceptions=True)

    def _on_sighup(self) -> None:
        work: Coroutine[Any, Any, object] = (
            self._follow() if self._follower() else self.controller.reload("SIGHUP", "signal")
        )
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(work)
        self._signal_tasks.add(task)
        task.add_done_callback(self._signal_tasks.discard)

    # ------------------------------------------------------------------ HTTP

    async def _json_body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        raw = await read_body(scope, receive, MAX_ADMIN_BODY)
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _bad('The body must be JSON, e.g. {"by": "alice"}.') from None
        if not isinstance(body, dict):
            raise _bad('The body must be a JSON object, e.g. {"by": "alice"}.')
        for key in ("by", "to"):
            if body.get(key) is not None and not (
                isinstance(body[key], str) and body[key].isprintable() and len(body[key]) <= 200
            ):
                raise _bad(f"`{key}` must be a short printable string.", key)
        return body

    @staticmethod
    def _who(body: dict[str, Any], scope: Scope) -> str:
        client = scope.get("client")
        where = client[0] if client else "?"
        if client is None:  # the leader's unix socket: a follower forwarded it, with the real client
            for k, v in scope.get("headers", ()):
                if k == CLIENT_HEADER:
                    where = v.decode("latin-1")
        who = str(body.get("by") or "api")
        return f"{who} from {where}"

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A follower: the leader runs every admin reload action; pass its answer on unchanged."""
        assert self.cluster is not None
        try:
            body = await read_body(scope, receive, MAX_ADMIN_BODY)
        except GatewayError as bad:
            await send_error(send, bad)
            return
        except ClientGone:
            return
        qs = scope.get("query_string", b"")
        target = scope["raw_path"] + (b"?" + qs if qs else b"")
        client = scope.get("client")
        timeout = self.controller.settings.verify_timeout_s + 60.0
        try:
            status, ctype, answer = await forward_to_leader(
                self.cluster, scope["method"], target, scope["headers"], body,
                client[0] if client else "?", timeout,
            )  # fmt: skip
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            err = GatewayError(
                503,
                f"The leader worker, which runs reloads, did not answer ({type(exc).__name__}: {exc}); "
                "it may be restarting. Try again in a few seconds.",
                "service_unavailable",
                "leader_unavailable",
            )
            err.headers["retry-after"] = "2"
            await send_error(send, err)
            return
        headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    def _follower(self) -> bool:
        return self.cluster is not None and not self.cluster.leader

    async def _answer(self, send: Send, res: ReloadResult) -> None:
        await send_json(send, HTTP_STATUS[res.result], orjson.dumps(res.as_dict()))

    async def handle_reload(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._follower():
            await self._forward(scope, receive, send)
            return
        await self._admin_action(
            scope, receive, send, "reload", lambda body: self.controller.reload("api", self._who(body, scope))
        )

    async def handle_rollback(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._follower():
            await self._forward(scope, receive, send)
            return
        await self._admin_action(
            scope,
            receive,
            send,
            "roll back",
            lambda body: self.controller.rollback(body.get("to") or None, self._who(body, scope)),
        )

    async def _admin_action(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        verb: str,
        action: Callable[[dict[str, Any]], Awaitable[ReloadResult]],
    ) -> None:
        """Admin key, JSON body, run ``action``; every failure answered in the error envelope."""
        if not await self.gateway.check_admin(scope, send):
            return
        body: dict[str, Any] = {}
        try:
            body = await self._json_body(scope, receive)
            res = await action(body)
        except GatewayError as err:
            await send_error(send, err)
            return
        except ClientGone:
            return
        except NoConfigDir as exc:
            await send_error(
                send,
                GatewayError(409, f"Nothing to {verb}: {exc}.", "invalid_request_error", "no_config_dir"),
            )
            return
        except BackupError as exc:  # rollback only: the backup asked for, or any, is missing
            code = "backup_not_found" if body.get("to") else "no_backup"
            await send_error(send, GatewayError(404, f"{exc}.", "invalid_request_error", code, "to"))
            return
        await self._answer(send, res)

    async def handle_history(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._follower():
            await self._forward(scope, receive, send)
            return
        if not await self.gateway.check_admin(scope, send):
            return
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        raw = (qs.get("limit") or ["50"])[0]
        if not raw.isdigit():
            await send_error(
                send, _bad("`limit` must be a whole number, e.g. /admin/reloads?limit=10", "limit")
            )
            return
        ctl = self.controller
        items = [r.as_dict() for r in reversed(ctl.history)][: int(raw)]
        body = {
            "config_dir": str(ctl.config_dir) if ctl.config_dir else None,
            "backups_dir": str(ctl.backups.root) if ctl.backups else None,
            "watching": bool(self.watcher and self.watcher.running),
            "plan_version": self.gateway.plan.version,
            "health_checks": self.gateway.health is not None,
            "reloads": items,
        }
        await send_json(send, 200, orjson.dumps(body))


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", "invalid_body", param)


def install_reload(
    gateway: Gateway,
    config_dir: Path | None,
    settings: ReloadSettings | None = None,
    targets: list[ReloadTarget] | None = None,
    cluster: Cluster | None = None,
) -> ReloadService:
    """Give ``gateway`` hot reload from ``config_dir`` (None: the package defaults, nothing to reload).

    Adds the admin routes now; the watcher and the SIGHUP handler start with the gateway (lifespan)
    and stop at shutdown. Bad ``AIB_RELOAD_*`` / ``AIB_BACKUPS_*`` values raise ConfigError.
    """
    rs = settings or ReloadSettings.resolve(gateway.settings)
    service = ReloadService(gateway, ReloadController(gateway, config_dir, rs, targets), cluster)
    gateway.add_route("/admin/reload", "POST", service.handle_reload)
    gateway.add_route("/admin/rollback", "POST", service.handle_rollback)
    gateway.add_route("/admin/reloads", "GET", service.handle_history)
    gateway.on_startup.append(service.start)
    gateway.on_shutdown.append(service.stop)
    return service
