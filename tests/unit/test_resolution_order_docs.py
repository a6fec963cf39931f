"""Every place that states the resolution order states the one the code has: capability/ before patterns.

The plan resolves exact -> alias -> discovered -> ``capability/<name>`` -> pattern
(``RoutingPlan.resolve``; docs/architecture.md says why). README, docs, the config comments and the
commented example each say so in their own words; this finds the passage in each and checks the order.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aib.config.compile import build_plan
from config_support import write_files

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# (file, a phrase that starts its statement of the order, how many characters the statement spans)
STATEMENTS = [
    ("README.md", "Model names resolve in this order", 300),
    ("docs/configuration.md", "## How a model name is resolved", 1200),
    ("docs/architecture.md", "plan.resolve(model):", 120),
    ("config/model-mappings.yaml", "Resolution order:", 200),
    ("src/aib/defaults/model-mappings.yaml", "Resolution order:", 200),
    ("config/examples/model-mappings.example.yaml", "How a requested model name is resolved", 600),
    ("src/aib/config/plan.py", "def resolve(self, name: str)", 300),
]


@pytest.mark.parametrize(("path", "start", "span"), STATEMENTS)
def test_each_statement_puts_capability_before_patterns(path: str, start: str, span: int) -> None:
    text = (REPO / path).read_text()
    assert start in text, f"{path}: the statement of the resolution order moved ({start!r})"
    passage = text[text.index(start) : text.index(start) + span].lower()
    words = re.finditer(r"exact|alias|discover|capabilit|pattern", passage)
    order = [{"discover": "discovered", "capabilit": "capability"}.get(m.group(0), m.group(0)) for m in words]
    firsts = list(dict.fromkeys(order))  # first mention of each, in order
    assert firsts == ["exact", "alias", "discovered", "capability", "pattern"], (path, firsts)


def test_the_code_resolves_capability_before_a_catch_all_pattern(tmp_path: Path) -> None:
    providers = "providers:\n  p: {type: openai_compatible, base_url: 'http://127.0.0.1:9', models: [{name: m, capabilities: [code]}]}\n"
    mappings = "models:\n  m: {provider: p}\npatterns:\n  - {match: '*', provider: p}\n"
    plan, _cfg, _warn = build_plan(write_files(tmp_path, providers, mappings))
    res = plan.resolve("capability/code")
    assert res is not None and res.matched_by == "capability" and res.group.name == "m"
    assert plan.resolve("anything").matched_by == "pattern"  # type: ignore[union-attr]
