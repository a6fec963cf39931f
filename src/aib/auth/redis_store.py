"""Keys and usage in Redis (``auth.store: redis``): what replicas of the gateway share.

The same :class:`~aib.auth.store.KeyStore` interface as the SQLite store, on a blocking redis-py
client (the gateway calls it from a thread, like the SQLite store; so does ``aib keys``):

* ``<prefix>{keys}:data``: a hash, key id -> the key as JSON (its hash, never its secret);
* ``<prefix>{keys}:gen``: the generation every change bumps (gateways poll it every 0.25 s, so a
  revocation holds on every replica within a second); ``<prefix>{keys}:num``: the last key number.
  The three share a hash tag, so a change is one MULTI/EXEC even on a Redis Cluster;
* ``<prefix>usage:<UTC day>``: a hash per day, ``<key number>:<counter>`` -> count (requests,
  prompt/completion/charged tokens, limited, errors), kept ``USAGE_KEEP_DAYS``. Every process adds
  its own (``HINCRBY``), so replicas sum up.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from typing import Any

import orjson

from aib.auth.keys import ClientKey, check_name, hash_secret, new_id, new_secret
from aib.auth.store import PREFIX_CHARS, Usage, check_settings, rotate_key
from aib.config.schema import RedisSettings
from aib.shared.link import sync_client

USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "charged_tokens", "limited", "errors")
USAGE_KEEP_DAYS = 400


# what a key is made of; derived fields (``limited``) are computed again on reading
_STORED = tuple(f.name for f in dataclass_fields(ClientKey) if f.init)


def _to_json(key: ClientKey) -> bytes:
    d = {name: getattr(key, name) for name in _STORED}
    d["models"] = list(key.models)
    return orjson.dumps(d)


def _from_json(raw: bytes) -> ClientKey:
    d = orjson.loads(raw)
    d["models"] = tuple(d.get("models") or ())
    return ClientKey(**{name: d[name] for name in _STORED if name in d})


class RedisKeyStore:
    def __init__(self, settings: RedisSettings, client: Any = None) -> None:
        self.settings = settings
        self.client = client if client is not None else sync_client(settings)
        p = settings.key_prefix
        self._data = f"{p}{{keys}}:data"
        self._gen = f"{p}{{keys}}:gen"
        self._num = f"{p}{{keys}}:num"
        self._usage = f"{p}usage:"

    def describe(self) -> str:
        from aib.shared.link import describe_url

        return f"redis {describe_url(self.settings)}"

    # ------------------------------------------------------------------ keys

    def generation(self) -> int:
        return int(self.client.get(self._gen) or 0)

    def load(self) -> list[ClientKey]:
        keys = [_from_json(v) for v in self.client.hvals(self._data)]
        return sorted(keys, key=lambda k: k.num)

    def get(self, key_id: str) -> ClientKey | None:
        raw = self.client.hget(self._data, key_id)
        return _from_json(raw) if raw else None

    def find(self, id_or_name: str) -> list[ClientKey]:
        key = self.get(id_or_name)
        if key is not None:
            return [key]
        return [k for k in self.load() if k.name == id_or_name]

    def create(self, name: str, **limits: Any) -> tuple[ClientKey, str]:
        check_name(name)
        fields = check_settings(limits)
        secret = new_secret()
        num = int(self.client.incr(self._num))
        while True:
            key = ClientKey(
                id=new_id(),
                num=num,
                name=name,
                prefix=secret[:PREFIX_CHARS],
                hash=hash_secret(secret),
                created_at=time.time(),
                **fields,
            )
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(self._data, key.id, _to_json(key))
            pipe.incr(self._gen)
            added, _ = pipe.execute()
            if added:  # else another key has this id (32 random bits): draw again
                return key, secret

    def revoke(self, id_or_name: str, at: float | None = None) -> list[ClientKey]:
        when = time.time() if at is None else at
        keys = [
            replace(k, revoked_at=when)
            for k in self.find(id_or_name)
            if k.revoked_at is None or k.revoked_at > when
        ]
        if not keys:
            return []
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._data, mapping={k.id: _to_json(k) for k in keys})
        pipe.incr(self._gen)
        pipe.execute()
        return keys

    def rotate(self, key_id: str, grace_s: float = 0.0) -> tuple[ClientKey, str, ClientKey]:
        return rotate_key(self, key_id, grace_s)

    # ------------------------------------------------------------------ usage

    def add_usage(self, deltas: Iterable[Usage]) -> None:
        pipe = self.client.pipeline(transaction=False)
        days = set()
        for u in deltas:
            name = self._usage + u.day
            days.add(name)
            for f in USAGE_FIELDS:
                v = getattr(u, f)
                if v:
                    pipe.hincrby(name, f"{u.key_num}:{f}", v)
        if not days:
            return
        for name in days:
            pipe.expire(name, USAGE_KEEP_DAYS * 86400)
        pipe.execute()

    def _days(self, names: list[str]) -> list[dict[bytes, bytes]]:
        pipe = self.client.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(n)
        return list(pipe.execute())

    def charged(self, day: str, month: str) -> dict[int, tuple[int, int]]:
        days = [f"{month}-{d:02d}" for d in range(1, 32)]
        out: dict[int, list[int]] = {}
        for d, fields in zip(days, self._days([self._usage + d for d in days]), strict=True):
            for k, v in fields.items():
                num, _, field = k.decode().partition(":")
                if field != "charged_tokens":
                    continue
                acc = out.setdefault(int(num), [0, 0])
                acc[1] += int(v)
                if d == day:
                    acc[0] += int(v)
        return {n: (a[0], a[1]) for n, a in out.items()}

    def usage(self, since_day: str | None = None) -> list[Usage]:
        names = sorted(
            n.decode() if isinstance(n, bytes) else n
            for n in self.client.scan_iter(match=self._usage + "*", count=1000)
        )
        names = [n for n in names if n[len(self._usage) :] >= (since_day or "")]
        rows: list[Usage] = []
        for name, fields in zip(names, self._days(names), strict=True):
            day = name[len(self._usage) :]
            per: dict[int, Usage] = {}
            for k, v in fields.items():
                num, _, field = k.decode().partition(":")
                if field in USAGE_FIELDS:
                    u = per.get(int(num))
                    if u is None:
                        u = per[int(num)] = Usage(int(num), day)
                    setattr(u, field, int(v))
            rows.extend(per[n] for n in sorted(per))
        return rows

    def close(self) -> None:
        from aib.shared.link import close_all

        close_all(self.client)
