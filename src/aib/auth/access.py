"""Which models a key may use: its ``models`` entries (names and globs), resolved like routes.

A request is allowed when the name asked for matches an entry, or resolves to a route that an entry
names (directly, through an alias, or by a glob on the route's name): a key for ``llama3`` may also
ask for ``llama3.1:8b`` when that is where the alias leads, and ``ollama/*`` allows every name the
``ollama/*`` pattern serves. A route's fallbacks serve the route: they need no entry of their own.
An empty list allows every model. Decisions are cached per plan and key (bounded).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from aib.auth.keys import ClientKey
from aib.config.plan import RoutingPlan

CACHE_MAX = 1024  # decisions kept per key and plan


class Access:
    """The compiled ``models`` entries of one key against one plan."""

    __slots__ = ("_cache", "_globs", "_names", "_routes", "plan")

    def __init__(self, entries: Iterable[str], plan: RoutingPlan) -> None:
        self.plan = plan
        names: set[str] = set()
        globs: list[re.Pattern[str]] = []
        for e in entries:
            if any(c in e for c in "*?["):
                globs.append(re.compile(fnmatch.translate(e)))
            else:
                names.add(e)
        self._names = frozenset(names)
        self._globs = tuple(globs)
        routes = set()
        for n in names:  # exact entries resolve like requests: an alias names its route
            res = plan.resolve(n)
            if res is not None and res.matched_by in ("exact", "alias", "discovered"):
                routes.add(res.group.name)
        self._routes = frozenset(routes)
        self._cache: dict[str, bool] = {}

    def _match(self, name: str) -> bool:
        return name in self._names or any(g.match(name) for g in self._globs)

    def allows(self, model: str) -> bool:
        hit = self._cache.get(model)
        if hit is not None:
            return hit
        ok = self._match(model)
        if not ok:
            res = self.plan.resolve(model)
            if res is not None:
                route = res.group.name
                ok = route in self._routes or (
                    res.matched_by in ("exact", "alias", "discovered") and self._match(route)
                )
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[model] = ok
        return ok


class AccessCache:
    """:class:`Access` per key for the current plan (rebuilt when the plan or the key changes)."""

    def __init__(self) -> None:
        self._plan: RoutingPlan | None = None
        self._by_key: dict[str, tuple[ClientKey, Access]] = {}

    def allows(self, key: ClientKey, model: str, plan: RoutingPlan) -> bool:
        if not key.models:
            return True
        if plan is not self._plan:
            self._plan = plan
            self._by_key = {}
        entry = self._by_key.get(key.id)
        if entry is None or entry[0] is not key:
            entry = self._by_key[key.id] = (key, Access(key.models, plan))
        return entry[1].allows(model)
