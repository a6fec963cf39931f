"""Run real llama.cpp OpenAI-compatible servers (``llama_cpp.server`` from llama-cpp-python) for tests.

>>> with LlamaCppServer(ensure_model(), alias="smollm2") as srv:   # doctest: +SKIP
...     OpenAI(base_url=srv.base_url, api_key="x").chat.completions.create(...)

Each server is one child process in its own process group, bound to 127.0.0.1, logging to a file.
Behaviour of ``llama_cpp.server`` 0.3.36 worth knowing (measured, see the tests):

* ``GET /v1/models`` lists exactly one model, the alias: ``{"id": ALIAS, "object": "model",
  "owned_by": "me", "permissions": []}`` (no ``created``); there is no ``/health`` (404) and ``/``
  answers 404 too, so readiness is "``/v1/models`` answers 200".
* The ``model`` field of a request is ignored (any name is served and echoed back).
* With its default ``--interrupt_requests True`` a new request aborts a running stream (the client sees
  the connection closed mid-body). This class passes ``--interrupt_requests False`` unless told
  otherwise: concurrent requests to one server then queue and run one at a time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
SERVER_MODULES = (
    "llama_cpp",
    "fastapi",
    "uvicorn",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)


class LlamaCppError(RuntimeError):
    """The server could not be started."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def llamacpp_available() -> bool:
    """True if ``python -m llama_cpp.server`` can run in this interpreter (the ``[server]`` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in SERVER_MODULES)


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours, but alive
        return True
    return True


class LlamaCppServer:
    """A ``llama_cpp.server`` child process serving ``model`` as ``alias`` on ``127.0.0.1:port``.

    ``port`` defaults to a free port, kept across :meth:`stop` / :meth:`start` so a restarted server
    comes back at the same address. ``base_url`` is the OpenAI base URL (``http://127.0.0.1:P/v1``),
    ``root_url`` the same without ``/v1``.
    """

    label = "llama_cpp.server"  # in error messages

    def __init__(
        self,
        model: Path | str,
        *,
        alias: str = "smollm2",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int = 1,
        interrupt_requests: bool = False,
        extra_args: Sequence[str] = (),
        log_path: Path | str | None = None,
        startup_timeout: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        self.model = Path(model)
        self.alias = alias
        self.port = port if port is not None else free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.interrupt_requests = interrupt_requests
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.python = python
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"aib-llamacpp-{self.port}-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    # ----- addresses -------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. for ``OpenAI(base_url=...)``."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        cmd = [
            self.python, "-m", "llama_cpp.server",
            "--model", str(self.model),
            "--host", HOST,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--model_alias", self.alias,
            "--interrupt_requests", str(self.interrupt_requests),
        ]  # fmt: skip
        return cmd + self.extra_args

    def environment(self) -> dict[str, str] | None:
        """The child's environment (None: this process's)."""
        return None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self, wait: bool = True) -> LlamaCppServer:
        """Start the process (no-op if running); with ``wait``, block until it is ready."""
        if self.is_running():
            return self
        self._reap()
        with self.log_path.open("ab") as log:
            log.write(f"\n--- aib: starting {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: signals go to it alone
            )
        self._started_at = time.monotonic()
        self.startup_seconds = None
        if wait:
            self.wait_ready()
        return self

    def _models_status(self) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                status: int = resp.status
                resp.read()
                return status
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float | None = None) -> float:
        """Block until ``GET /v1/models`` answers 200; return seconds since start.

        Raises :class:`LlamaCppError` with the log tail if the process dies, or on timeout (after
        stopping the process)."""
        proc = self._proc
        if proc is None:
            raise LlamaCppError("server not started")
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        while True:
            code = proc.poll()
            if code is not None:
                self._reap()
                raise LlamaCppError(
                    f"{self.label} exited with code {code} during startup (log {self.log_path}):\n"
                    + self.log_tail()
                )
            if self._models_status() == 200:
                self.startup_seconds = time.monotonic() - self._started_at
                return self.startup_seconds
            if time.monotonic() >= deadline:
                self.stop()
                raise LlamaCppError(
                    f"{self.label} on port {self.port} not ready within "
                    f"{self.startup_timeout if timeout is None else timeout:.1f}s (log {self.log_path}):\n"
                    + self.log_tail()
                )
            time.sleep(0.05)

    def warm_up(self, timeout: float = 60.0) -> float:
        """Send one 1-token chat completion and return its duration in seconds.

        The first request after start takes ~1 s (vs ~0.1 s later); warming up keeps latency-sensitive
        tests stable."""
        body = json.dumps(
            {"model": self.alias, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        ).encode()
        req = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
        return time.monotonic() - t0

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s, wait; return the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc.pid, signal.SIGKILL)
        return self._reap()

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _reap(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        return proc.wait()

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<LlamaCppServer {self.alias} {self.base_url} {state}>"


__all__ = ["LlamaCppError", "LlamaCppServer", "free_port", "llamacpp_available", "pid_alive"]
