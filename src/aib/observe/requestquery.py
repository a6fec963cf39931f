"""Reading the request log: recent requests, one request's trace, latency and error statistics.

Opens the database read-only, so reading never takes the writer's lock. Used by ``aib logs`` and
meant for a UI::

    with RequestLogReader("var/requests.db") as rl:
        rl.query(model="smollm2", status="5xx", since=parse_since("1h"))
        rl.trace("5f1c...")
        rl.stats(since=parse_since("1d"))
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import Any

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
REQUEST_COLUMNS = (
    "id", "request_id", "ts", "endpoint", "model", "route", "matched_by", "rule", "provider", "upstream", "status",
    "stream", "ttfb_ms", "total_ms", "overhead_ms", "prompt_tokens", "completion_tokens", "fallbacks", "error",
    "error_code", "plan_version", "client_disconnected",
)  # fmt: skip
ATTEMPT_COLUMNS = ("n", "target", "provider", "route", "status", "error", "ttfb_ms", "duration_ms", "ok")


class RequestLogMissing(FileNotFoundError):
    """There is no request log at the path (yet)."""


def parse_since(text: str, now: float | None = None) -> float:
    """``"10m"``, ``"2h"``, ``"1d"``, ``"90s"``, ``"1w"`` (a bare number is minutes) -> unix seconds."""
    m = _SINCE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 10m, 2h, 1d, 1w")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2) or "m"]
    return (now if now is not None else time.time()) - seconds


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    k = max(math.ceil(q * len(sorted_values)) - 1, 0)
    return sorted_values[min(k, len(sorted_values) - 1)]


def _status_clause(status: str) -> tuple[str, list[Any]]:
    s = status.strip().lower()
    if s in ("error", "errors", "failed"):
        return "(status >= 400 OR status = 0 OR error IS NOT NULL)", []
    if s in ("ok", "success"):
        return "(status BETWEEN 200 AND 399 AND error IS NULL)", []
    if re.fullmatch(r"[1-5]xx", s):
        base = int(s[0]) * 100
        return "(status BETWEEN ? AND ?)", [base, base + 99]
    if s.isdigit():
        return "status = ?", [int(s)]
    raise ValueError(f"status {status!r}: use a code (404), a class (5xx), 'error' or 'ok'")


class RequestLogReader:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise RequestLogMissing(
                f"no request log at {self.path}: the gateway writes it once it has served a request "
                "(set its place with AIB_REQUEST_LOG or --db)"
            )
        self.db = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, timeout=2.0)
        self.db.row_factory = sqlite3.Row
        self._columns: tuple[str, ...] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The request columns this file has: one written before a migration lacks its column (the
        reader is read-only: it never migrates)."""
        if self._columns is None:
            have = {r[1] for r in self.db.execute("PRAGMA table_info(requests)")}
            more = ("key_name", "door", "prompt_truncated")
            self._columns = tuple(c for c in (*REQUEST_COLUMNS, *more) if c in have or not have)
        return self._columns

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RequestLogReader:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ queries

    def query(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        since: float | None = None,
        route: str | None = None,
        provider: str | None = None,
        key: str | None = None,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Requests matching every filter given, newest first (oldest first with ``after_id``, for
        tailing). ``key``: a client key's name."""
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("model", model), ("route", route), ("provider", provider), ("key_name", key)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if status is not None:
            clause, extra = _status_clause(status)
            where.append(clause)
            args.extend(extra)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if after_id is not None:
            where.append("id > ?")
            args.append(after_id)
        if key is not None and "key_name" not in self.columns:
            return []  # written before keys existed: no request has a key
        sql = f"SELECT {', '.join(self.columns)} FROM requests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY id {'ASC' if after_id is not None else 'DESC'} LIMIT ?"
        args.append(max(int(limit), 1))
        return [dict(r) for r in self.db.execute(sql, args)]

    def key_names(self, since: float | None = None) -> list[str]:
        """The client key names seen in the log (since ``since``), sorted; [] before keys existed."""
        if "key_name" not in self.columns:
            return []
        sql = "SELECT DISTINCT key_name FROM requests WHERE key_name IS NOT NULL"
        args: list[Any] = []
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        return sorted(r[0] for r in self.db.execute(sql, args))

    def trace(self, request_id: str) -> dict[str, Any] | None:
        """One request (the latest with this id, or a unique id prefix or suffix): route, attempts, timings."""
        cols = ", ".join(REQUEST_COLUMNS)
        row = self.db.execute(
            f"SELECT {cols} FROM requests WHERE request_id = ? ORDER BY id DESC LIMIT 1", (request_id,)
        ).fetchone()
        part = request_id.strip("…")  # `aib logs` shows long ids as …<last 12 characters>
        if row is None and len(part) >= 6:
            like = part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            for pattern in (like + "%", "%" + like):  # a unique prefix, else a unique suffix
                rows = self.db.execute(
                    f"SELECT {cols} FROM requests WHERE request_id LIKE ? ESCAPE '\\' ORDER BY id DESC LIMIT 2",
                    (pattern,),
                ).fetchall()
                if len({r["request_id"] for r in rows}) == 1:
                    row = rows[0]
                    break
        if row is None:
            return None
        out = dict(row)
        out["attempts"] = [
            dict(a)
            for a in self.db.execute(
                f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE req_id = ? ORDER BY n", (row["id"],)
            )
        ]
        body = self.db.execute(
            "SELECT request, response FROM bodies WHERE req_id = ?", (row["id"],)
        ).fetchone()
        if body is not None:
            out["request_body"] = _text(body["request"])
            out["response_body"] = _text(body["response"])
        return out

    def stats(
        self, since: float | None = None, model: str | None = None, key: str | None = None
    ) -> list[dict[str, Any]]:
        """Per model: requests, error rate, latency p50/p95/p99, stream TTFT p50, tokens and tokens/s.
        ``key``: only the requests of this client key's name."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if key is not None:
            if "key_name" not in self.columns:
                return []
            where.append("key_name = ?")
            args.append(key)
        cond = " AND ".join(where)
        out: dict[str, dict[str, Any]] = {}
        for r in self.db.execute(
            f"""SELECT model, count(*) AS requests,
                   sum(CASE WHEN status >= 400 OR status = 0 OR error IS NOT NULL THEN 1 ELSE 0 END) AS errors,
                   sum(fallbacks > 0) AS fell_back,
                   coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                   coalesce(sum(completion_tokens), 0) AS completion_tokens,
                   count(prompt_tokens) + count(completion_tokens) AS token_counts,
                   sum(coalesce(error_code, '') = 'model_not_found') AS not_found,
                   sum(CASE WHEN completion_tokens > 0 THEN total_ms END) AS gen_ms,
                   min(ts) AS first_ts, max(ts) AS last_ts
                FROM requests WHERE {cond} GROUP BY model ORDER BY requests DESC, model""",
            args,
        ):
            gen_ms = r["gen_ms"] or 0.0
            out[r["model"]] = {
                "model": r["model"],
                "requests": r["requests"],
                "errors": r["errors"],
                "error_rate": r["errors"] / r["requests"],
                "fallback_rate": r["fell_back"] / r["requests"],
                "prompt_tokens": r["prompt_tokens"],
                "completion_tokens": r["completion_tokens"],
                # False: no request reported tokens (the two sums above are 0 for want of counts)
                "tokens_reported": r["token_counts"] > 0,
                "not_found": r["not_found"],  # requests refused as an unknown model (404)
                "tokens_per_s": (r["completion_tokens"] / (gen_ms / 1000.0)) if gen_ms > 0 else None,
                "first_ts": r["first_ts"],
                "last_ts": r["last_ts"],
            }
        for kind, col, extra in (
            ("", "total_ms", ""),
            ("ttft_", "ttfb_ms", " AND stream = 1 AND ttfb_ms IS NOT NULL"),
        ):
            current: str | None = None
            values: list[float] = []
            for r in self.db.execute(
                f"SELECT model, {col} FROM requests WHERE {cond}{extra} ORDER BY model, {col}", args
            ):
                if r[0] != current:
                    if current is not None:
                        _put_percentiles(out[current], kind, values)
                    current, values = r[0], []
                values.append(r[1])
            if current is not None:
                _put_percentiles(out[current], kind, values)
        for s in out.values():
            for key in ("p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms"):
                s.setdefault(key, None)
        return list(out.values())


def _put_percentiles(into: dict[str, Any], kind: str, values: list[float]) -> None:
    for q in (50, 95, 99):
        into[f"{kind}p{q}_ms"] = percentile(values, q / 100)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")
