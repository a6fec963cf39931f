"""Every command the README prints works as printed, from a fresh shell, after its set-up commands.

The README's commands are collected from its ``bash`` blocks and from inline code that starts with
``aib``, ``make`` or ``source``; each must have an entry in :data:`RUNS` (a new README command
without one fails :func:`test_every_readme_command_has_a_run`), and each entry runs the command, or
the closest bounded form of it, in ``bash --noprofile --norc`` with a bare ``PATH`` (no ``.venv/bin``:
a new terminal). Bounded means: a free port instead of 4000 (``make run ARGS="--port P"``), the test's
gateway instead of one on 4000 (``-g URL``), ``--once``/``--check`` for the endless ones, ``make -n``
for ``make test`` (this suite is it) and ``--help`` for the long benchmark and the rollback.

The gateway they talk to is ``aib serve`` on a copy of the shipped ``config/``, as ``make run``
starts it; where the lab's servers do not run (here), requests to it fail as the README says.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aib.devtools.llamacpp import free_port
from gateway_harness import wait_until
from serve_support import Served, aib_serve, served_trace

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
ACTIVATE = "source .venv/bin/activate"
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"
ERROR_NAMES = ("ollama/llama3.1:8b", "llama_cpp_python/llama-cpp-default")  # llama3's chain, shipped config


def readme_commands() -> list[str]:
    """The README's commands: each line of its bash blocks (comments cut, continuations joined), then
    inline code that starts with `aib `, `make ` or `source `."""
    found: list[str] = []
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                found.append(re.sub(r"\s+", " ", line))
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    found += [c for c in re.findall(r"`([^`\n]+)`", prose) if re.match(r"(aib|make|source) ", c)]
    return list(dict.fromkeys(found))


@dataclass
class Ctx:
    served: Served
    tmp: Path
    config_copy: Path
    request_id: str

    @property
    def url(self) -> str:
        return self.served.base_url


def sh(cmd: str, timeout: float = 120, activate: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """``cmd`` in a new non-login bash in the checkout, ``.venv`` activated first as the README says."""
    full = f"{ACTIVATE} && {cmd}" if activate else cmd
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", full],
        cwd=REPO,
        env=fresh_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fresh_env(**extra: str) -> dict[str, str]:
    env = {"PATH": BARE_PATH, "HOME": os.environ["HOME"], "LANG": "C.UTF-8", "COLUMNS": "200"}
    env["AIB_REQUEST_LOG"] = "off"  # nothing written into the checkout's var/
    return {**env, **extra}


def ok(res: subprocess.CompletedProcess[str], *expect: str, codes: tuple[int, ...] = (0,)) -> str:
    out = res.stdout + res.stderr
    assert res.returncode in codes, f"exit {res.returncode}:\n{out}"
    assert "Traceback" not in out and "command not found" not in out, out
    for text in expect:
        assert text in out, (text, out)
    return out


@contextlib.contextmanager
def background(cmd: str, port: int, path: str = "/", timeout: float = 90, **env: str) -> Iterator[str]:
    """Start ``cmd`` (a server) in a fresh shell, in its own process group; yield once ``path`` on
    ``port`` answers; stop the group by its PID (SIGTERM, then SIGKILL)."""
    proc = subprocess.Popen(
        [
            "bash",
            "--noprofile",
            "--norc",
            "-c",
            f"{ACTIVATE} && exec {cmd}" if cmd.startswith("aib") else cmd,
        ],
        cwd=REPO,
        env=fresh_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def answers() -> bool:
        assert proc.poll() is None, (
            f"{cmd} exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
        )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_until(answers, timeout, 0.2, f"{cmd} to answer on {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- the runs


def run_make_run(ctx: Ctx) -> None:
    port = free_port()
    with background(f'make run ARGS="--port {port}"', port, "/health/live"):
        pass


def run_aib_serve(ctx: Ctx) -> None:
    port = free_port()
    with background(f"aib serve --port {port}", port, "/health/live"):
        pass


def run_make_test(ctx: Ctx) -> None:
    out = ok(sh("make -n test", activate=False))
    assert "pytest --cov" in out and "--cov-fail-under=90" in out and "tests/" in out


def run_activate(ctx: Ctx) -> None:
    assert sh("aib --version", activate=False).returncode == 127  # a new shell has no aib ...
    assert ok(sh("command -v aib")).strip() == str(REPO / ".venv/bin/aib")  # ... until this


def run_curl(ctx: Ctx) -> None:
    block = next(b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if b.startswith("curl"))
    out = ok(sh(block.replace("127.0.0.1:4000", f"127.0.0.1:{ctx.served.port}"), activate=False))
    answer = json.loads(out)
    if "error" in answer:  # the lab's servers do not run here: every deployment named, as the README says
        msg = answer["error"]["message"]
        assert answer["error"]["code"] == "upstream_unreachable" and msg.startswith("Tried 2 deployments")
        assert all(name in msg for name in ERROR_NAMES), msg
    else:
        assert answer["choices"][0]["message"]["content"]


def run_make_demo(ctx: Ctx) -> None:
    demo_dir = ctx.tmp / "demo"
    args = f"--check --no-ui --port {free_port()} --dir {demo_dir}"
    ok(sh(f'make demo ARGS="{args}"', timeout=300, activate=False), "check ok: smollm2 answered")


def run_doctor(ctx: Ctx) -> None:
    ok(sh(f"aib doctor -g {ctx.url}"), f"{ctx.url}: ", codes=(0, 1))


def run_monitor(ctx: Ctx) -> None:
    ok(sh(f"aib monitor --once --interval 0.2 -g {ctx.url}"), "ollama")


def run_monitor_json(ctx: Ctx) -> None:
    res = sh(f"aib monitor --once --json --interval 0.2 -g {ctx.url}")
    assert "providers" in json.loads(ok(res).strip())


def run_ui(ctx: Ctx) -> None:
    port = free_port()
    with background(f"aib ui --port {port} --gateway {ctx.url} --db off", port, "/", timeout=120):
        pass


def run_validate(ctx: Ctx) -> None:
    ok(sh("aib validate"), "OK config")


def run_explain(ctx: Ctx) -> None:
    ok(sh("aib explain llama3"), "llama3 -> route llama3.1:8b")


def run_models(ctx: Ctx) -> None:
    ok(sh("aib models"), "llama3")


def run_generate(ctx: Ctx) -> None:
    ok(sh("aib generate --check"))
    ok(sh(f"aib generate -c {ctx.config_copy}"))
    assert (ctx.config_copy / "litellm-unified.yaml").read_text() == (
        REPO / "config/litellm-unified.yaml"
    ).read_text()


def run_schema(ctx: Ctx) -> None:
    ok(sh("aib schema --check"))


def run_ports(ctx: Ctx) -> None:
    ok(sh("aib ports"), "11434", codes=(0, 1))  # 1: something of this machine holds a configured port


def run_health(ctx: Ctx) -> None:
    ok(sh(f"aib health -g {ctx.url}"), "ollama", codes=(0, 1))


def run_logs(ctx: Ctx) -> None:
    db = ctx.served.request_log
    ok(sh(f"aib logs --db {db}"), "llama3")


def run_logs_trace(ctx: Ctx) -> None:
    ok(sh(f"aib logs --db {ctx.served.request_log} trace {ctx.request_id}"), "ollama")


def run_logs_stats(ctx: Ctx) -> None:
    ok(sh(f"aib logs --db {ctx.served.request_log} stats"), "llama3")


def run_bench(ctx: Ctx) -> None:
    ok(sh("aib bench --help"), "--quick")  # a real run takes minutes: tests/integration/test_bench_run.py


def run_reload(ctx: Ctx) -> None:
    ok(sh(f"aib reload -g {ctx.url}"), "unchanged")


def run_rollback(ctx: Ctx) -> None:
    ok(sh("aib rollback --help"), "--to")  # restoring files: tests/integration/test_reload_cli.py


def run_backups(ctx: Ctx) -> None:
    ok(sh(f"aib backups -c {ctx.config_copy}"))


def run_cache_stats(ctx: Ctx) -> None:
    ok(sh(f"aib cache stats -g {ctx.url}"), "backend: memory", "entries: ")


KEYS_CREATE = "aib keys create alice --models 'llama3,ollama/*' --rpm 60 --tpm 100000 --budget-day 2000000"


def run_keys_create(ctx: Ctx) -> None:
    store = ctx.tmp / "keys.db"  # not var/keys.db in the checkout
    out = ok(sh(KEYS_CREATE, AIB_KEYS_DB=str(store)), "for alice: models llama3, ollama/*", "rpm 60")
    assert store.exists() and out.startswith("sk-aib-"), out


def run_serve_exposed(ctx: Ctx) -> None:
    """Without keys and an admin key it refuses before it listens (it never binds 0.0.0.0 here)."""
    res = sh(f"timeout 60 aib serve --host 0.0.0.0 --port {free_port()}", AIB_CONFIG_DIR=str(ctx.config_copy))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "0.0.0.0" in res.stderr, res.stderr


def make_dry(target: str, expect: str) -> Callable[[Ctx], None]:
    def run(ctx: Ctx) -> None:
        ok(sh(f"make -n {target}", activate=False), expect)

    return run


def run_python_snippet(ctx: Ctx) -> None:
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    code = code.replace("127.0.0.1:4000", f"127.0.0.1:{ctx.served.port}")
    res = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    if res.returncode != 0:  # the lab's servers do not run here: the SDK raises the gateway's error
        assert "openai.APIStatusError" in res.stderr or "InternalServerError" in res.stderr, res.stderr
        assert all(name in res.stderr for name in ERROR_NAMES), res.stderr
    else:
        assert res.stdout.strip()


RUNS: dict[str, Callable[[Ctx], None]] = {
    "make run": run_make_run,
    "make test": run_make_test,
    "source .venv/bin/activate": run_activate,
    "curl -s http://127.0.0.1:4000/v1/chat/completions -H 'content-type: application/json' -d "
    """'{"model": "llama3", "messages": [{"role": "user", "content": "Say hi"}]}'""": run_curl,
    "make demo": run_make_demo,
    "aib demo --check": run_make_demo,
    "aib demo [--check]": run_make_demo,
    "aib doctor": run_doctor,
    "aib monitor": run_monitor,
    "aib monitor [--once]": run_monitor,
    "aib monitor --once [--json]": run_monitor_json,
    "aib ui": run_ui,
    "aib serve": run_aib_serve,
    "aib validate": run_validate,
    "aib explain MODEL": run_explain,
    "aib models": run_models,
    "aib generate [--check]": run_generate,
    "aib schema [--check]": run_schema,
    "aib ports": run_ports,
    "aib health": run_health,
    "aib logs": run_logs,
    "aib logs trace ID": run_logs_trace,
    "aib logs stats": run_logs_stats,
    "aib bench [--quick]": run_bench,
    "aib reload": run_reload,
    "aib rollback [--to ID]": run_rollback,
    "aib backups": run_backups,
    KEYS_CREATE: run_keys_create,
    "aib keys create NAME": run_keys_create,
    "aib serve --host 0.0.0.0": run_serve_exposed,
    "make lint": make_dry("lint", "mypy"),
    "make generate": make_dry("generate", "aib generate"),
    "make litellm": make_dry("litellm", ""),
    "aib cache stats": run_cache_stats,
    "make llama-server": make_dry("llama-server", "aib.devtools.llama_server_build"),
    "make test-vllm": make_dry("test-vllm", "scripts/vllm-setup.sh"),
}


def test_every_readme_command_has_a_run() -> None:
    assert set(readme_commands()) == set(RUNS), "add a run for each new README command (and drop old ones)"


def test_blocks_with_aib_commands_start_by_activating() -> None:
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if any(ln.startswith("aib ") for ln in lines):
            assert lines[0].startswith(ACTIVATE), block
    assert f"Run them after `{ACTIVATE}`" in README  # the commands table


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    tmp = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "config", tmp / "run" / "config")  # what `make run` serves, copied
    config_copy = tmp / "copy"
    shutil.copytree(REPO / "config", config_copy)
    with aib_serve(tmp / "run" / "config", tmp / "serve.log", request_log=tmp / "requests.db") as served:
        rid = "readme-" + os.urandom(6).hex()
        body = json.dumps({"model": "llama3", "messages": [{"role": "user", "content": "Say hi"}]}).encode()
        req = urllib.request.Request(
            served.base_url + "/v1/chat/completions",
            body,
            {"content-type": "application/json", "x-request-id": rid},
        )
        with contextlib.suppress(OSError):  # 502 where the lab's servers are not running
            urllib.request.urlopen(req, timeout=30).close()
        served_trace(served, rid)
        yield Ctx(served, tmp, config_copy, rid)


def _grouped() -> list[tuple[str, Callable[[Ctx], None]]]:
    """One case per run, named by every README command it stands for."""
    by_run: dict[Callable[[Ctx], None], list[str]] = {}
    for command, run in RUNS.items():
        by_run.setdefault(run, []).append(command)
    return [(" | ".join(commands), run) for run, commands in by_run.items()]


@pytest.mark.parametrize(("commands", "run"), _grouped(), ids=[c for c, _ in _grouped()])
def test_readme_command_works_as_printed(commands: str, run: Callable[[Ctx], None], ctx: Ctx) -> None:
    run(ctx)


def test_the_python_snippet_runs(ctx: Ctx) -> None:
    run_python_snippet(ctx)


@pytest.mark.parametrize(
    ("target", "installs"),
    [("run", "pip install -q --no-compile -e ."), ("demo", "pip install -e '.[llamacpp,ui]'")],
)
def test_make_run_and_demo_install_only_what_they_need(target: str, installs: str, tmp_path: Path) -> None:
    """On a fresh checkout (no .venv): `make run` installs the gateway alone, `make demo` adds only its
    two extras; the test and bench extras come with `make test`."""
    shutil.copy(REPO / "Makefile", tmp_path)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    res = subprocess.run(
        ["make", "-n", target], cwd=tmp_path, env=fresh_env(), capture_output=True, text=True, timeout=30
    )
    out = ok(res)
    assert "python3 -m venv .venv" in out and installs in out
    assert "test," not in out and "bench" not in out, out
