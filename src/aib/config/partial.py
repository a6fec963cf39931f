"""Cross-file checks on files that failed the schema, so one run reports both kinds of error.

A schema error used to hide every cross-file error until it was fixed; then the next run showed the
rest. Here each entry with a schema error (a provider, a route, an alias, a pattern, ...) is left out,
the rest is validated again, and the cross-file checks run on that, treating the names left out as
known (a fallback to a route with a bad key is not also "a fallback to an unknown model"). Issues
point at the lines of the files as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from aib.config.errors import ConfigIssue
from aib.config.yamlsource import YamlDoc, to_plain

M = TypeVar("M", bound=BaseModel)
ROUNDS = 4  # leaving entries out rarely needs more than one round (never more than a few)


@dataclass
class LeftOut:
    """What was left out of the files for the cross-file checks."""

    providers: set[str] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)  # route names and aliases
    # for each top-level list with entries left out: index in what was checked -> index in the file
    index_map: dict[str, list[int]] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.providers or self.routes or self.index_map)

    def file_loc(self, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
        """``loc`` in what was checked -> the same place in the file."""
        if len(loc) > 1 and isinstance(loc[0], str) and isinstance(loc[1], int) and loc[0] in self.index_map:
            return (loc[0], self.index_map[loc[0]][loc[1]], *loc[2:])
        return loc


def _validate_without_bad_entries(cls: type[M], doc: YamlDoc, left: LeftOut) -> M | None:
    """``cls`` from ``doc`` with each entry that fails the schema left out (None: cannot be done)."""
    data = to_plain(doc.data)
    if not isinstance(data, dict):
        return None
    cuts: set[tuple[str, Any]] = set()  # (section, key or the file's index; None: the section)
    for _ in range(ROUNDS):
        try:
            return cls.model_validate(_without(data, cuts, left))
        except ValidationError as exc:
            found: set[tuple[str, Any]] = set()
            for err in exc.errors(include_url=False):
                loc = tuple(err["loc"])
                if not loc or not isinstance(loc[0], str):
                    return None  # a whole-file error: nothing to leave out
                section, value = loc[0], data.get(loc[0])
                if not isinstance(value, dict | list):
                    found.add((section, None))  # a scalar (version) or an unknown key: its default
                elif len(loc) == 1:
                    return None  # a whole section is wrong: cross-file checks would only guess
                elif isinstance(value, list) and isinstance(loc[1], int):
                    kept = left.index_map.get(section)
                    found.add((section, kept[loc[1]] if kept is not None else loc[1]))
                else:
                    found.add((section, loc[1]))
            if found <= cuts:
                return None
            cuts |= found
    return None


def _without(data: dict[str, Any], cuts: set[tuple[str, Any]], left: LeftOut) -> dict[str, Any]:
    """``data`` with the ``cuts`` left out; records names and index maps in ``left``."""
    out = dict(data)
    by_section: dict[str, set[Any]] = {}
    for section, entry in cuts:
        by_section.setdefault(section, set()).add(entry)
    for section, entries in by_section.items():
        value = out.get(section)
        if None in entries or not isinstance(value, dict | list):
            out.pop(section, None)
        elif isinstance(value, dict):
            out[section] = {k: v for k, v in value.items() if k not in entries}
            for k in entries:
                _note(left, section, k, value.get(k))
        else:
            keep = [i for i in range(len(value)) if i not in entries]
            out[section] = [value[i] for i in keep]
            left.index_map[section] = keep
    return out


def _note(left: LeftOut, section: str, key: Any, value: Any) -> None:
    name = str(key)
    if section == "providers":
        left.providers.add(name)
    elif section in ("models", "aliases"):
        left.routes.add(name)
        aliases = value.get("aliases") if isinstance(value, dict) else None
        if isinstance(aliases, list):
            left.routes.update(str(a) for a in aliases)


def cross_file_issues(p_doc: YamlDoc, m_doc: YamlDoc, config_dir: Any) -> list[ConfigIssue]:
    """The cross-file issues of two files that parse but fail the schema (their schema errors are
    reported by the caller). Empty when too little of them is valid to say anything useful."""
    from aib.config.check import check_config  # check imports load, which imports this module
    from aib.config.load import LoadedConfig
    from aib.config.schema import MappingsFile, ProvidersFile

    left_p, left_m = LeftOut(), LeftOut()
    providers = _validate_without_bad_entries(ProvidersFile, p_doc, left_p)
    mappings = _validate_without_bad_entries(MappingsFile, m_doc, left_m)
    if providers is None or mappings is None:
        return []
    left = LeftOut(left_p.providers, left_m.routes, left_m.index_map)
    cfg = LoadedConfig(providers, mappings, p_doc, m_doc, config_dir)
    return check_config(cfg, left)
