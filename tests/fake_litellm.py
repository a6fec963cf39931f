"""A stand-in for the ``litellm`` executable, for supervisor tests (not a test module).

Takes LiteLLM's command line (``--config C --host H --port P --num_workers N``), serves
``/health/readiness`` and ``/health/liveliness`` on H:P, and appends one JSON line per event to
``$FAKE_LITELLM_RECORD``: ``{"event": "start", "pid", "argv", "config", "env": {...}}``, then
``{"event": "signal", "pid", "signal": "SIGTERM"}`` when a signal arrives, ``{"event": "exit", ...}``.

``$FAKE_LITELLM_MODE``:
  serve              serve until SIGTERM/SIGINT, then exit 0 (default)
  crash              exit 3 at once, never ready
  crash-after-ready  serve, then exit 7 after ``$FAKE_LITELLM_UPTIME`` seconds (default 0.3)
  ignore-term        serve and ignore SIGTERM/SIGINT (only SIGKILL ends it)
  orphan-worker      serve, after starting a worker process (recorded as a "worker" event) that
                     ignores SIGTERM and outlives it, as a stuck worker of a multi-worker server would
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

ENV_KEYS = (
    "LITELLM_LOCAL_MODEL_COST_MAP",
    "LITELLM_TELEMETRY_DISABLED",
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY",
    "LITELLM_MASTER_KEY",
)


def record(event: str, **fields: Any) -> None:
    path = os.environ.get("FAKE_LITELLM_RECORD")
    if path:
        with Path(path).open("a") as fh:
            fh.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path in ("/health/readiness", "/health/liveliness"):
            body = b'{"status":"healthy"}'
            self.send_response(200)
        else:
            body = b'{"error":"not found"}'
            self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4000)
    ap.add_argument("--num_workers", type=int, default=1)
    ap.add_argument("--timeout_worker_healthcheck", type=int, default=None)
    a = ap.parse_args()
    mode = os.environ.get("FAKE_LITELLM_MODE", "serve")
    config = Path(a.config).read_text() if Path(a.config).exists() else None
    record("start", argv=sys.argv[1:], mode=mode, config=config, env={k: os.environ.get(k) for k in ENV_KEYS})
    print(f"fake litellm {os.getpid()} starting in mode {mode}", flush=True)
    if mode == "crash":
        print("fake litellm: crashing before ready", flush=True)
        return 3
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        record("signal", signal=signal.Signals(signum).name)
        if mode != "ignore-term":
            done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if mode == "orphan-worker":
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
        worker = subprocess.Popen([sys.executable, "-c", code])  # ignores SIGTERM: only SIGKILL ends it
        record("worker", worker=worker.pid)
    server = http.server.ThreadingHTTPServer((a.host, a.port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if mode == "crash-after-ready":
        done.wait(float(os.environ.get("FAKE_LITELLM_UPTIME", "0.3")))
        server.shutdown()
        record("exit", code=7)
        return 7
    deadline = time.monotonic() + 120  # never outlive a broken test
    while not done.wait(0.05) and time.monotonic() < deadline:
        pass
    server.shutdown()
    record("exit", code=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
