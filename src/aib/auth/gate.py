"""The "who" and "may" stages of the request path (docs/architecture.md):

* :meth:`Gate.identify`: the client key of a request (``Authorization: Bearer``, ``x-api-key``,
  ``api-key``) → a :class:`~aib.auth.keys.ClientKey`, or a 401 that says what is wrong;
* :meth:`Gate.check_model`: may this key use this model? (403 naming the model, nothing more);
* :meth:`Gate.admit` / :meth:`Gate.settle`: its limits (:mod:`aib.limits`), and its usage.

Keys live in a :class:`~aib.auth.store.KeyStore`; the gate keeps a snapshot (hash → key) that
requests read without I/O, and a background task (:meth:`Gate.run`) polls the store's generation every
``poll_s`` (new, rotated and revoked keys take effect within a second on every worker) and once a
second writes the usage it counted and reads back the budget totals.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

from aib.auth.access import AccessCache
from aib.auth.keys import ADMIN, ClientKey
from aib.auth.store import KeyStore, SqliteKeyStore, Usage
from aib.config.plan import RoutingPlan
from aib.limits.limiter import Limiter, Ticket
from aib.limits.slots import LocalSlots, Slots

log = logging.getLogger("aib.auth")
POLL_S = 0.25  # how often the store's generation is read
MISS_REFRESH_S = 0.1
TOKEN_CACHE_MAX = 4096  # an unknown key makes the store be read again, at most this often
FLUSH_S = 1.0  # how often usage goes to the store
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")


class AuthError(Exception):
    """A request the gate refuses: 401 (who) or 403 (may)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def bearer(value: bytes) -> bytes:
    """The token of an ``Authorization`` value (``Bearer X``; a bare token is taken as is)."""
    if value[:7].lower() == b"bearer ":
        return value[7:].strip()
    return value.strip()


class Gate:
    def __init__(
        self,
        store_path: Path | Callable[[], KeyStore],
        slots: Slots | None = None,
        admin_key: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._open_store: Callable[[], KeyStore] = (
            (lambda: SqliteKeyStore(store_path)) if isinstance(store_path, Path) else store_path
        )
        self.store_path = store_path if isinstance(store_path, Path) else None
        self.store: KeyStore | None = None
        self.admin_key = admin_key
        self.limiter = Limiter(slots or LocalSlots())
        self.access = AccessCache()
        self.keys: dict[bytes, ClientKey] = {}  # sha256 digest -> key
        self.by_id: dict[str, ClientKey] = {}
        self.generation = -1
        self._usage: dict[tuple[int, str], Usage] = {}
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self._refreshed_at = 0.0
        # keys seen lately -> their key: a hash and the admin comparison only on a key's first use
        # (cleared whenever the keys or the secrets change; made-up keys are never kept)
        self._tokens: dict[bytes, ClientKey] = {}
        self._reloading = threading.Lock()
        self._refresh: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ the store

    def open(self) -> KeyStore:
        """The store, opened (and its keys loaded) on first use."""
        if self.store is None:
            self.store = self._open_store()
            self.reload_keys()
        return self.store

    def reload_keys(self) -> bool:
        """Read the keys again when the store's generation moved; True when it did."""
        store = self.store
        if store is None:
            return False
        with self._reloading:  # the poller and a refusal may both read: one at a time, newest wins
            gen = store.generation()
            if gen == self.generation:
                return False
            keys = store.load()
            self.keys = {bytes.fromhex(k.hash): k for k in keys}
            self.by_id = {k.id: k for k in keys}
            self._tokens = {}
            self.generation = gen
            return True

    async def run(self) -> None:
        """Poll the store and write usage until cancelled (started with the gateway)."""
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + FLUSH_S
        while True:
            await asyncio.sleep(POLL_S)
            if self.store is None:
                continue
            try:
                await asyncio.to_thread(self.reload_keys)
                if loop.time() >= next_flush:
                    next_flush = loop.time() + FLUSH_S
                    await self.flush()
                self._warned.discard("store")
            except Exception as exc:  # the store is a file: a full disk, a lock held too long
                if "store" not in self._warned:
                    self._warned.add("store")
                    log.warning("key store %s: %s (keys in force stay as they were)", self.store_path, exc)

    async def flush(self) -> None:
        """Write the usage counted since the last flush; read back the budget totals."""
        store = self.store
        if store is None:
            return
        pending, self._usage = self._usage, {}
        budgets = self.limiter.budgets
        budgets.take_pending()
        day, month = budgets.day, budgets.month

        def write() -> dict[int, tuple[int, int]]:
            store.add_usage(pending.values())
            return store.charged(day, month)

        try:
            totals = await asyncio.to_thread(write)
        except BaseException:
            budgets.forget_flush()
            for k, u in pending.items():  # written next time
                mine = self._usage.get(k)
                if mine is None:
                    self._usage[k] = u
                else:
                    mine.add(u)
            raise
        budgets.refreshed(day, totals)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.store is not None:
            try:
                await self.flush()
            except Exception as exc:
                log.warning("key store %s: the last usage was not written: %s", self.store_path, exc)
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ who

    def identify(self, token: bytes | None) -> ClientKey:
        """The key a request presents, or :class:`AuthError` 401."""
        if not token:
            raise AuthError(
                401,
                "Missing API key. Send it as `Authorization: Bearer <key>` (or `x-api-key: <key>`); "
                "an administrator makes one with `aib keys create NAME`.",
                "missing_api_key",
            )
        key = self._tokens.get(token)
        if key is None:
            admin = self.admin_key()
            if admin and hmac.compare_digest(token, admin.encode()):
                key = ADMIN
            else:
                key = self.keys.get(sha256(token).digest())
                if key is None:  # never remembered: made-up keys cannot fill the memory
                    raise AuthError(
                        401, "Invalid API key: this gateway knows no such key.", "invalid_api_key"
                    )
            if len(self._tokens) >= TOKEN_CACHE_MAX:
                self._tokens.clear()
            self._tokens[token] = key
        if key.revoked_at is not None or key.expires_at is not None:
            state = key.state()
            if state != "active":
                raise AuthError(
                    401,
                    f"This API key ({key.prefix}…, {key.name}) was {state}; ask for a new one.",
                    f"{state}_api_key",
                )
        return key

    async def identify_fresh(self, token: bytes | None) -> ClientKey:
        """:meth:`identify`, reading the store once more first when the key is unknown: a key made a
        moment ago works at once on every worker. Concurrent misses share one read, and reads are at
        least ``MISS_REFRESH_S`` apart (a miss right after a read waits for the next one), so made-up
        keys cannot make the store busy. Only the refusal path pays for it."""
        try:
            return self.identify(token)
        except AuthError as err:
            if err.code != "invalid_api_key" or self.store is None:
                raise
            task = self._refresh
            if task is None:
                wait = MISS_REFRESH_S - (time.monotonic() - self._refreshed_at)
                task = self._refresh = asyncio.ensure_future(self._refresh_once(max(wait, 0.0)))
            try:
                await asyncio.shield(task)
            except Exception:  # the store is unreadable: the snapshot stays, the refusal too
                raise err from None
            return self.identify(token)

    async def _refresh_once(self, delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            await asyncio.to_thread(self.reload_keys)
        finally:
            self._refreshed_at = time.monotonic()
            self._refresh = None

    def forget_tokens(self) -> None:
        """Look every key up afresh (the admin key may have changed)."""
        self._tokens = {}

    # ------------------------------------------------------------------ may

    def check_model(self, key: ClientKey, model: str, plan: RoutingPlan) -> None:
        if not self.access.allows(key, model, plan):
            raise AuthError(
                403, f"This API key may not use the model {model!r}.", "model_not_allowed", "model"
            )

    def allows(self, key: ClientKey, model: str, plan: RoutingPlan) -> bool:
        return self.access.allows(key, model, plan)

    def admit(
        self, key: ClientKey, payload: dict[str, Any], body_size: int, endpoint: str, reserve_default: int
    ) -> Ticket | None:
        """Take the request's place under the key's limits (None: the key has none). A request that
        sets no max_tokens reserves ``reserve_default`` tokens for its answer (``auth.reserve_tokens``)."""
        if key.num == 0 or not key.limited:
            return None
        reserve = 0
        if key.tpm is not None or key.budget_day is not None or key.budget_month is not None:
            reserve = body_size // 4  # the prompt, estimated high: about 4 bytes of JSON per token
            if endpoint != "embeddings":
                asked = None
                for f in MAX_TOKENS_FIELDS:
                    v = payload.get(f)
                    if type(v) is int and v > 0:
                        asked = v
                        break
                reserve += asked if asked is not None else reserve_default
        return self.limiter.admit(key, reserve)

    def settle(
        self,
        key: ClientKey,
        ticket: Ticket | None,
        status: int,
        prompt: int | None,
        completion: int | None,
        limited: bool = False,
    ) -> None:
        """A request of ``key`` is over (whatever happened after :meth:`identify`): charge what it
        used (the reservation of a successful answer that reported no usage), count it."""
        if prompt is not None or completion is not None:
            charged = (prompt or 0) + (completion or 0)
        else:
            charged = ticket.reserved if ticket is not None and status == 200 else 0
        if ticket is not None:
            self.limiter.settle(ticket, charged)
        if not key.num:  # the admin key: no usage of its own
            return
        budgets = self.limiter.budgets
        now = time.time()
        day = budgets.day if now < budgets.day_ends else budgets.today(now)
        u = self._usage.get((key.num, day))
        if u is None:
            u = self._usage[(key.num, day)] = Usage(key.num, day)
        u.requests += 1
        if prompt:
            u.prompt_tokens += prompt
        if completion:
            u.completion_tokens += completion
        u.charged_tokens += charged
        if limited:
            u.limited += 1
        elif status >= 400:
            u.errors += 1

    def usage_today(self, key: ClientKey) -> tuple[int, int]:
        return self.limiter.budgets.used(key.num)
