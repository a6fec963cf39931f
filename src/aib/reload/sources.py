"""Both config files as read at one moment: their bytes, or what stopped the read.

A reload reads each file once and builds everything from these bytes (never re-reading a file that
may be changing); the watcher compares two reads to know the files stopped changing.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from aib.config.errors import ConfigIssue
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE, display_name, sources_hash

MAX_FILE_BYTES = 8 * 1024 * 1024  # a config file is a few kB; anything this large is a mistake
FILES = (PROVIDERS_FILE, MAPPINGS_FILE)


@dataclass(frozen=True)
class Sources:
    providers: bytes | None
    mappings: bytes | None
    names: tuple[str, str]  # as errors show them, e.g. config/providers.yaml
    issues: tuple[ConfigIssue, ...] = ()  # why a file could not be read
    stamps: tuple[tuple[int, int], ...] = ()  # (size, mtime_ns) per file, (-1, -1) when unreadable

    @property
    def readable(self) -> bool:
        return self.providers is not None and self.mappings is not None

    @property
    def version(self) -> str | None:
        """The plan version these bytes compile to (a hash of both), None when a file is unreadable."""
        if self.providers is None or self.mappings is None:
            return None
        return sources_hash(self.providers, self.mappings)


def _read(path: Path, display: str) -> tuple[bytes | None, ConfigIssue | None, tuple[int, int]]:
    def problem(msg: str) -> tuple[None, ConfigIssue, tuple[int, int]]:
        return None, ConfigIssue(display, None, "", msg), (-1, -1)

    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return problem("is a directory, expected a YAML file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            return problem("is not a regular file, expected a YAML file")
        if st.st_size > MAX_FILE_BYTES:
            return problem(
                f"is {st.st_size} bytes, larger than any config file should be (limit {MAX_FILE_BYTES})"
            )
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return problem("file not found (deleted or renamed?)")
    except OSError as exc:
        return problem(f"cannot read file: {exc.strerror or exc}")
    return raw, None, (st.st_size, st.st_mtime_ns)


def read_sources(config_dir: Path) -> Sources:
    """Read ``providers.yaml`` and ``model-mappings.yaml`` from ``config_dir``."""
    raws: list[bytes | None] = []
    issues: list[ConfigIssue] = []
    stamps: list[tuple[int, int]] = []
    names = tuple(display_name(config_dir / f) for f in FILES)
    for fname, display in zip(FILES, names, strict=True):
        raw, issue, st = _read(config_dir / fname, display)
        raws.append(raw)
        stamps.append(st)
        if issue is not None:
            issues.append(issue)
    return Sources(raws[0], raws[1], (names[0], names[1]), tuple(issues), tuple(stamps))


def from_bytes(providers: bytes, mappings: bytes, names: tuple[str, str] = FILES) -> Sources:
    """Sources that did not come from the config folder (a backup being restored)."""
    return Sources(providers, mappings, names)
