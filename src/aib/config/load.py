"""Load both config files into validated models, collecting every problem before giving up."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from aib.config.errors import ConfigError, ConfigIssue
from aib.config.partial import cross_file_issues
from aib.config.schema import MappingsFile, ProvidersFile
from aib.config.yamlsource import YamlDoc, parse_yaml, read_yaml, to_plain

PROVIDERS_FILE = "providers.yaml"
MAPPINGS_FILE = "model-mappings.yaml"
GENERATED_FILE = "litellm-unified.yaml"
M = TypeVar("M", bound=BaseModel)
DEFAULTS_DIR = Path(__file__).resolve().parent.parent / "defaults"


@dataclass(frozen=True)
class LoadedConfig:
    """Both files, validated, with their parsed trees (for line numbers) and a hash of their bytes."""

    providers: ProvidersFile
    mappings: MappingsFile
    providers_doc: YamlDoc
    mappings_doc: YamlDoc
    config_dir: Path | None

    @property
    def sources_hash(self) -> str:
        return sources_hash(self.providers_doc.raw, self.mappings_doc.raw)


def sources_hash(providers_raw: bytes, mappings_raw: bytes) -> str:
    h = hashlib.sha256()
    for raw in (providers_raw, mappings_raw):
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()[:16]


def resolve_config_dir(config_dir: str | Path | None) -> Path:
    """``--config-dir``, else ``$AIB_CONFIG_DIR``, else ``./config``."""
    if config_dir is not None:
        return Path(config_dir)
    return Path(os.environ.get("AIB_CONFIG_DIR") or "config")


def display_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, RuntimeError, OSError):  # not under cwd, or a symlink loop (RuntimeError on 3.11)
        return str(path)


def load_config(config_dir: str | Path | None = None) -> LoadedConfig:
    """Read, parse and validate both files. Raises :class:`ConfigError` with every error found."""
    cdir = resolve_config_dir(config_dir)
    docs: list[YamlDoc | None] = []
    issues: list[ConfigIssue] = []
    for fname in (PROVIDERS_FILE, MAPPINGS_FILE):
        path = cdir / fname
        doc, errs = read_yaml(path, display_name(path))
        docs.append(doc)
        issues.extend(errs)
    return _validate(docs[0], docs[1], issues, cdir)


def load_from_bytes(
    providers_raw: bytes, mappings_raw: bytes, names: tuple[str, str] = (PROVIDERS_FILE, MAPPINGS_FILE)
) -> LoadedConfig:
    """The same as :func:`load_config` for content already read (a reload reads each file once)."""
    p_doc, p_errs = parse_yaml(providers_raw, names[0])
    m_doc, m_errs = parse_yaml(mappings_raw, names[1])
    return _validate(p_doc, m_doc, [*p_errs, *m_errs], None)


def load_defaults() -> LoadedConfig:
    """The configuration shipped inside the package (what `aib serve` runs on with no config dir)."""
    return load_config(DEFAULTS_DIR)


def _validate(
    p_doc: YamlDoc | None, m_doc: YamlDoc | None, issues: list[ConfigIssue], cdir: Path | None
) -> LoadedConfig:
    parsed = not issues and p_doc is not None and m_doc is not None
    providers = _model(ProvidersFile, p_doc, issues)
    mappings = _model(MappingsFile, m_doc, issues)
    if issues or providers is None or mappings is None or p_doc is None or m_doc is None:
        if parsed and p_doc is not None and m_doc is not None:  # both files parse: say the rest too
            seen = {(i.file, i.line, i.path) for i in issues}
            more = cross_file_issues(p_doc, m_doc, cdir)
            issues.extend(i for i in more if (i.file, i.line, i.path) not in seen)
        raise ConfigError(issues)
    return LoadedConfig(providers, mappings, p_doc, m_doc, cdir)


def _model(cls: type[M], doc: YamlDoc | None, issues: list[ConfigIssue]) -> M | None:
    if doc is None:
        return None
    try:
        return cls.model_validate(to_plain(doc.data))
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            if err["type"] == "union_tag_invalid":
                loc = (*loc, "type")  # point at the bad `type:` line, not the provider's
            line, path = doc.line_of(loc)
            issues.append(ConfigIssue(doc.name, line, path, _message(err)))
        return None


def _message(err: Any) -> str:
    msg = str(err["msg"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see docs/configuration.md for the keys allowed here)"
    if kind == "union_tag_invalid":
        return f"unknown provider type {err['input'].get('type')!r}; expected one of " + str(
            err["ctx"]["expected_tags"]
        )
    if kind == "union_tag_not_found":
        return "missing `type` (one of ollama, llamacpp, vllm, openai, anthropic, openai_compatible)"
    if kind == "missing":
        return "required key is missing"
    msg = msg.removeprefix("Value error, ")
    if (
        kind not in ("value_error", "assertion_error")
        and "input" in err
        and not isinstance(err["input"], dict | list)
    ):
        msg += f" (got {err['input']!r})"
    return msg
