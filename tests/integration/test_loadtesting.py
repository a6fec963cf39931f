"""scripts/loadtesting/locustfile.py, run headless for a few seconds against the gateway in front of the
instant fake upstream: it reports requests (plain, streamed, time to first token) and no failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway_harness import fake_openai_process, running_gateway, write_config

pytestmark = pytest.mark.integration

LOCUSTFILE = Path(__file__).resolve().parents[2] / "scripts" / "loadtesting" / "locustfile.py"
K6_SCRIPT = LOCUSTFILE.with_name("k6-chat.js")


def test_locustfile_headless_against_the_gateway(tmp_path: Path) -> None:
    with fake_openai_process("--chunks", "4") as fake:
        cfg = write_config(
            tmp_path / "cfg",
            f"providers:\n  fake: {{type: openai_compatible, base_url: '{fake.base_url}', models: [fake-model]}}\n",
            "models:\n  bench: {provider: fake, upstream: fake-model}\n",
        )
        with running_gateway(cfg) as gw:
            env = {
                **os.environ,
                "AIB_LOAD_MODEL": "bench",
                "AIB_LOAD_WAIT": "0,0.05",
                "AIB_LOAD_STREAM_SHARE": "0.5",
                # the run ends after this much work, not after a few seconds: on a busy machine a 3 s
                # run could end before a single request had been answered (stats then empty)
                "AIB_LOAD_REQUESTS": "40",
            }
            cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", gw.base_url, "--headless"]
            cmd += [
                "--users",
                "4",
                "--spawn-rate",
                "4",
                "--run-time",
                "120s",  # only a bound: AIB_LOAD_REQUESTS ends it
                "--json",
                "--skip-log",
                "--only-summary",
            ]
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
            )
            served = len(gw.observer.records)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = {s["name"]: s for s in json.loads(done.stdout)}
    assert set(stats) == {"chat", "chat (stream)", "time to first token", "whole stream"}, stats.keys()
    for name, s in stats.items():
        assert s["num_requests"] > 0, name
        assert s["num_failures"] == 0, (name, done.stderr[-2000:])
    assert stats["whole stream"]["num_requests"] == stats["chat (stream)"]["num_requests"]
    assert served >= stats["chat"]["num_requests"] + stats["chat (stream)"]["num_requests"]


def test_k6_script_is_documented_and_valid_javascript(tmp_path: Path) -> None:
    text = K6_SCRIPT.read_text()
    assert "k6 run -e BASE_URL=" in text and "/v1/chat/completions" in text
    assert "export default function" in text and "thresholds" in text
    node = shutil.which("node")
    if node is not None:  # k6 itself cannot be installed here; node at least parses the module
        copy = tmp_path / "k6-chat.mjs"
        copy.write_text(text)
        done = subprocess.run(
            [node, "--check", str(copy)], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
