"""Secrets never leave the process: :class:`Scrubber` masks every known secret value in what the
gateway emits.

The values are those of every provider's ``api_key_env``, the admin key and any other secret the
gateway holds (the LiteLLM-SDK adapter's token). Upstreams sometimes echo the key they were sent (in
an error body, a health answer, a stream's error event): every byte that comes from an upstream and
goes to a client, ``/health``, a log line or the request log passes through :meth:`Scrubber.bytes`
or :meth:`Scrubber.text` first. Only values of at least ``MIN_LEN`` characters are secrets: a local
server's placeholder key ("none", "unused") is not one, and masking it would mangle answers.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
MIN_LEN = 8


class Scrubber:
    __slots__ = ("_bytes", "_text")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._text: tuple[str, ...] = ()
        self._bytes: tuple[bytes, ...] = ()
        self.update(values)

    def update(self, values: Iterable[str]) -> None:
        """Replace the set of secret values (longest first, so a key inside another is masked whole)."""
        vals = sorted({v for v in values if v and len(v) >= MIN_LEN}, key=len, reverse=True)
        self._text = tuple(vals)
        self._bytes = tuple(v.encode("utf-8", "surrogateescape") for v in vals)

    @property
    def values(self) -> tuple[str, ...]:
        return self._text

    def bytes(self, data: bytes) -> bytes:
        for v in self._bytes:
            if v in data:
                data = data.replace(v, b"***")
        return data

    def text(self, text: str) -> str:
        for v in self._text:
            if v in text:
                text = text.replace(v, MASK)
        return text


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


def proxy_secrets() -> list[str]:
    """The passwords of the upstream proxies in the environment, and their Proxy-Authorization
    values (a proxy that echoes the request would show them)."""
    out: list[str] = []
    for raw in env_values(PROXY_VARS):
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        if parts.password:
            password = unquote(parts.password)
            cred = f"{unquote(parts.username or '')}:{password}".encode()
            out += [password, base64.b64encode(cred).decode()]
    return out


def env_values(names: Iterable[str | None]) -> list[str]:
    """The values of the environment variables ``names`` (unset ones left out)."""
    return [v for n in names if n and (v := os.environ.get(n))]


class ScrubFilter(logging.Filter):
    """A log filter that masks secrets in every record's message (installed on the root handlers)."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        if self.scrubber.values:
            msg = record.getMessage()
            clean = self.scrubber.text(msg)
            if clean is not msg and clean != msg:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                text = str(record.exc_info[1])
                if self.scrubber.text(text) != text:  # an exception quoting a secret: its type only
                    record.exc_text = f"{type(record.exc_info[1]).__name__}: {self.scrubber.text(text)}"
                    record.exc_info = None
        return True


def install_log_filter(scrubber: Scrubber) -> ScrubFilter:
    """Mask ``scrubber``'s secrets in everything the root logger's handlers write (replacing the
    filter a previous gateway of this process installed)."""
    f = ScrubFilter(scrubber)
    for h in logging.getLogger().handlers:
        for old in [x for x in h.filters if isinstance(x, ScrubFilter)]:
            h.removeFilter(old)
        h.addFilter(f)
    return f
