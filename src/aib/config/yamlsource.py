"""Read a YAML file keeping line numbers, so every error can point at its line.

ruamel.yaml's round-trip loader records where each key and item starts; duplicate keys are an error
(not a silent override), and tabs, unclosed quotes and the like come back as one issue with the line
the parser stopped at.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from aib.config.errors import ConfigIssue


@dataclass(frozen=True)
class YamlDoc:
    """A parsed file: its display name, raw bytes and the round-trip tree (None when unreadable)."""

    name: str
    raw: bytes
    data: Any

    def line_of(self, loc: tuple[str | int, ...]) -> tuple[int | None, str]:
        """The 1-based line of the deepest node on ``loc`` that exists, and the dotted path of ``loc``.

        Parts of ``loc`` that are not in the file (a discriminated union's tag that pydantic inserts,
        or a missing key) are skipped for the line and kept out of the path when they are union tags.
        """
        node = self.data
        line: int | None = 1
        path: list[str] = []
        for i, part in enumerate(loc):
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1 if hasattr(node, "lc") else line
                child = node[part]
                path.append(str(part))
                node = child
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line = node.lc.item(part)[0] + 1
                path.append(f"[{part}]")
                node = node[part]
            elif isinstance(node, CommentedMap) and isinstance(part, str) and _is_union_tag(node, part):
                continue
            else:
                path.append(str(part) if not isinstance(part, int) else f"[{part}]")
                # a missing key: point at the parent mapping; later parts are not in the file either
                path.extend(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc[i + 1 :])
                break
        return line, ".".join(path).replace(".[", "[")


def _is_union_tag(node: CommentedMap, part: str) -> bool:
    # pydantic puts the discriminator value in the location ("providers.x.ollama.base_url").
    return node.get("type") == part or part in ("str", "dict[str,any]", "function-after", "function-before")


def read_yaml(path: Path, display: str) -> tuple[YamlDoc | None, list[ConfigIssue]]:
    """Read and parse one file. Returns the document, or None with the issues that stopped it."""
    try:
        if path.is_dir():
            return None, [ConfigIssue(display, None, "", "is a directory, expected a YAML file")]
        if path.exists() and not path.is_file():  # a FIFO or device would block or never end
            return None, [ConfigIssue(display, None, "", "is not a regular file, expected a YAML file")]
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [ConfigIssue(display, None, "", "file not found")]
    except OSError as exc:
        return None, [ConfigIssue(display, None, "", f"cannot read file: {exc.strerror or exc}")]
    return parse_yaml(raw, display)


def parse_yaml(raw: bytes, display: str) -> tuple[YamlDoc | None, list[ConfigIssue]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [ConfigIssue(display, None, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        return None, [ConfigIssue(display, None, "", "file is empty")]
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = " ".join(p for p in (exc.context, exc.problem) if p)
        opened = any(f" a {what}" in msg for what in ("quoted scalar", "flow sequence", "flow mapping"))
        if opened and exc.context_mark is not None and ("end of stream" in msg or "<stream end>" in msg):
            # an unclosed quote or bracket: point where it opens, not at the end of the file
            mark = exc.context_mark
            msg += " (a quote or bracket opened here is never closed)"
        line = mark.line + 1 if mark is not None else None
        if "found character '\\t'" in msg or "\\t" in msg:
            msg += " (YAML does not allow tabs for indentation; use spaces)"
        if "found duplicate key" in msg:
            msg = msg.split(" with value")[0].replace("while constructing a mapping ", "")
        return None, [ConfigIssue(display, line, "", f"YAML syntax error: {msg}")]
    except YAMLError as exc:  # pragma: no cover - ruamel raises marked errors for all syntax problems
        return None, [ConfigIssue(display, None, "", f"YAML error: {exc}")]
    if not isinstance(data, CommentedMap):
        kind = "a list" if isinstance(data, list) else type(data).__name__ if data is not None else "nothing"
        return None, [ConfigIssue(display, 1, "", f"the top level must be a mapping, found {kind}")]
    return YamlDoc(display, raw, data), []


def to_plain(node: Any) -> Any:
    """ruamel's tree as plain dicts and lists (what pydantic validates)."""
    if isinstance(node, dict):
        return {k: to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    for kind in (bool, int, float, str):  # ruamel's Scalar* subclasses -> plain types
        if isinstance(node, kind):
            return kind(node)
    return node
