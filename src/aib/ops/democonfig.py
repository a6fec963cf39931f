"""The configuration `aib demo` writes: two llama.cpp servers and every kind of route.

* ``smollm2``: a load-balanced group of both servers (aliases ``chat`` and ``default``);
* ``smollm2-a``: an exact name on server A whose fallback chain goes to ``smollm2-b``;
* ``smollm2-b``: an exact name on server B.

Rewritten on every run (the servers' ports change); it is an ordinary config folder, so
``aib validate``, ``aib explain`` and ``aib doctor`` work on it with ``--config-dir``.
"""

from __future__ import annotations

from pathlib import Path

from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE

PROVIDERS = ("demo-a", "demo-b")
MODEL = "smollm2"  # the load-balanced group, and the alias both servers serve the model under
PRIMARY = "smollm2-a"  # an exact name with a fallback chain
ALIASES = ("chat", "default")

_PROVIDERS_YAML = """\
# Written by `aib demo` on every run (the ports change): edits here are lost.
# Two llama.cpp servers on loopback, each serving SmolLM2-135M under the name "{model}".
# llama-cpp-python answers /v1/models (the health probe) only between generations, so a long answer
# delays the probe: a generous timeout keeps a busy server from counting as down. A stopped server
# is still seen at once (connection refused).
version: 1
providers:
  demo-a:
    type: llamacpp
    base_url: http://127.0.0.1:{port_a}
    description: llama.cpp server A (SmolLM2-135M), started by aib demo
    models:
      - name: {model}
        capabilities: [chat, completion]
    health: {{interval_s: 5, timeout_s: 30}}  # busy != down: see the note at the top
  demo-b:
    type: llamacpp
    base_url: http://127.0.0.1:{port_b}
    description: llama.cpp server B (SmolLM2-135M), started by aib demo
    models:
      - name: {model}
        capabilities: [chat, completion]
    health: {{interval_s: 5, timeout_s: 30}}  # busy != down: see the note at the top
"""

_MAPPINGS_YAML = """\
# Written by `aib demo` on every run: edits here are lost. Try `aib explain NAME -c <this folder>`.
version: 1
defaults:
  timeouts: {{connect_s: 1, first_byte_s: 60, total_s: 120}}
  breaker: {{failure_threshold: 2, cooldown_s: 10}}
models:
  # a load-balanced group: both servers, taking turns (least_outstanding suits real load better)
  {model}:
    strategy: round_robin
    aliases: [{aliases}]
    deployments:
      - {{provider: demo-a, upstream: {model}}}
      - {{provider: demo-b, upstream: {model}}}
  # an exact name on server A; when A fails, its fallback chain answers from server B
  {primary}:
    provider: demo-a
    upstream: {model}
    fallbacks: [{model}-b]
  {model}-b:
    provider: demo-b
    upstream: {model}
"""


MARK = "# Written by `aib demo`"


def not_ours(config_dir: Path) -> Path | None:
    """A config file in ``config_dir`` that the demo did not write (it would be overwritten), or None."""
    for name in (PROVIDERS_FILE, MAPPINGS_FILE):
        path = config_dir / name
        try:
            with path.open() as f:
                first = f.readline()
        except FileNotFoundError:
            continue
        if not first.startswith(MARK):
            return path
    return None


def write(config_dir: Path, ports: tuple[int, int]) -> Path:
    """Write both files for servers A and B on ``ports``; return the folder."""
    config_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "model": MODEL,
        "primary": PRIMARY,
        "aliases": ", ".join(ALIASES),
        "port_a": ports[0],
        "port_b": ports[1],
    }
    (config_dir / PROVIDERS_FILE).write_text(_PROVIDERS_YAML.format(**values))
    (config_dir / MAPPINGS_FILE).write_text(_MAPPINGS_YAML.format(**values))
    return config_dir


def describe() -> list[str]:
    """One line per name a client can use."""
    return [
        f"{MODEL:<10} both servers, taking turns (load-balanced; aliases: {', '.join(ALIASES)})",
        f"{PRIMARY:<10} server A; falls back to {MODEL}-b when A fails",
        f"{MODEL + '-b':<10} server B",
    ]


def examples(gateway_url: str) -> str:
    """A curl command and an openai SDK snippet, ready to paste."""
    return f"""\
Try it with curl:

curl -s {gateway_url}/v1/chat/completions -H 'content-type: application/json' \\
  -d '{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "Say hi"}}]}}'

or with the openai SDK (pip install openai):

python3 - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{gateway_url}/v1", api_key="unused")
reply = client.chat.completions.create(model="{ALIASES[0]}", messages=[{{"role": "user", "content": "Say hi"}}])
print(reply.choices[0].message.content)
EOF"""
