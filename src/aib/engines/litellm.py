"""The LiteLLM engine: ``aib serve --engine litellm --litellm-direct`` runs the real LiteLLM proxy on the
gateway's port. (Without ``--litellm-direct`` it runs behind a thin aib front that hot-reloads it:
:mod:`aib.engines.litellm_front`, which reuses this module's helpers.)

The proxy gets a config generated from the same two YAML files the native engine reads
(:func:`aib.config.export_litellm.export_litellm`), written into a private temporary folder, and runs
under a :class:`~aib.engines.supervisor.Supervisor`: ready once ``GET /health/readiness`` answers 200
(never ``/health``, which sends a real completion to every deployment), restarted with back-off when
it dies, stopped cleanly on SIGTERM/SIGINT. SIGHUP regenerates the config and restarts the proxy when
the file changed (LiteLLM has no hot reload: requests in flight at that moment are cut).

LiteLLM is not a dependency of aib. It is looked up as ``$AIB_LITELLM_BIN``, then
``.venv-litellm/bin/litellm`` (``make litellm`` creates it), then ``litellm`` beside this Python,
then ``litellm`` on ``PATH``. The environment it needs offline is set unless already set:
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (else importing it fetches a cost map from the internet) and
``LITELLM_TELEMETRY_DISABLED=true``. LiteLLM 1.108 refuses to start without ``LITELLM_MASTER_KEY``;
on a loopback address without one, the proxy is allowed to start open (like the native engine), and
anywhere else a key is required. ``$AIB_LITELLM_WORKERS`` (default 1) sets LiteLLM's worker processes;
with more than one, the worker health-check timeout is raised to 120 s (workers take ~20 s to boot and
LiteLLM's default restart-loops them).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from aib.config.compile import build_plan
from aib.config.export_litellm import export_litellm
from aib.config.load import GENERATED_FILE
from aib.engines.supervisor import Backoff, Supervisor, SupervisorError

log = logging.getLogger("aib.engines.litellm")

ENV_BIN = "AIB_LITELLM_BIN"
WORKERS_ENV = "AIB_LITELLM_WORKERS"
VENV_DIR = ".venv-litellm"
PINNED = "litellm[proxy]==1.108.7"
INSTALL_HINT = (
    f"install it in its own venv with `make litellm` (creates {VENV_DIR}/ with {PINNED}), "
    "or into this one with `pip install 'ai-backend-unified[litellm]'`, "
    f"or point ${ENV_BIN} at a litellm executable"
)
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY_DISABLED": "true"}
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
PERMIT_OPEN_ENV = "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY"
READY_PATH = "/health/readiness"
LIVE_PATH = "/health/liveliness"
WORKER_HEALTHCHECK_S = 120  # workers take ~20 s to boot; LiteLLM's default check restart-loops them


class EngineError(RuntimeError):
    """The engine cannot run; the message says what to do."""


def _project_roots() -> list[Path]:
    here = Path(__file__).resolve()
    roots = [Path.cwd()]
    if len(here.parents) > 3 and (here.parents[3] / "pyproject.toml").exists():  # an editable checkout
        roots.append(here.parents[3])
    return roots


def find_litellm(env: Mapping[str, str] | None = None) -> Path:
    """The litellm executable to run, or :class:`EngineError` saying how to get one."""
    e = os.environ if env is None else env
    explicit = e.get(ENV_BIN)
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise EngineError(f"${ENV_BIN}={explicit} is not an executable file; {INSTALL_HINT}")
    candidates = [root / VENV_DIR / "bin" / "litellm" for root in _project_roots()]
    candidates.append(Path(sys.executable).parent / "litellm")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("litellm", path=e.get("PATH"))
    if found:
        return Path(found)
    raise EngineError(f"LiteLLM is not installed: {INSTALL_HINT}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def litellm_env(host: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The proxy's environment: ``base`` (default: ours) plus what it needs offline and to start."""
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    if not env.get(MASTER_KEY_ENV):
        if not is_loopback(host):
            raise EngineError(
                f"LiteLLM on {host} needs ${MASTER_KEY_ENV} (clients then send it as their API key): "
                f'export {MASTER_KEY_ENV}="sk-$(openssl rand -hex 32)", or bind to 127.0.0.1'
            )
        env.setdefault(PERMIT_OPEN_ENV, "true")  # loopback only, like the native engine
    return env


def litellm_command(binary: Path, config: Path, host: str, port: int, workers: int = 1) -> list[str]:
    cmd = [str(binary), "--config", str(config), "--host", host, "--port", str(port)]
    cmd += ["--num_workers", str(workers)]
    if workers > 1:
        cmd += ["--timeout_worker_healthcheck", str(WORKER_HEALTHCHECK_S)]
    return cmd


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``GET url`` answers 200 (proxies from the environment are not used)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            resp.read()
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EngineError(
                    f"{host}:{port} is already in use; stop what listens there or pick --port"
                ) from None
            raise EngineError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def write_config(config_dir: Path, dest: Path) -> tuple[bool, tuple[str, ...]]:
    """Generate the LiteLLM config from ``config_dir`` into ``dest``: (changed, notes).

    Raises :class:`aib.config.errors.ConfigError` on a bad config (``dest`` is then left as it was)."""
    plan, cfg, warnings = build_plan(config_dir)
    for w in warnings:
        log.warning("%s", w)
    export = export_litellm(cfg, plan)
    try:
        if dest.read_text(encoding="utf-8") == export.text:
            return False, export.notes
    except FileNotFoundError:
        pass
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(export.text, encoding="utf-8")
    tmp.replace(dest)
    return True, export.notes


class LiteLLMEngine:
    """The LiteLLM proxy on ``host:port`` for the config in ``config_dir``, supervised.

    :meth:`run` blocks until :meth:`stop` (or a signal, with ``handle_signals``); the generated
    config lives in :attr:`workdir` and is deleted afterwards. ``log_path`` None: its output goes to
    this process's stdout/stderr.
    """

    def __init__(
        self,
        config_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 4000,
        workers: int = 1,
        binary: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        backoff: Backoff | None = None,
        ready_timeout_s: float = 180.0,
        max_start_failures: int = 5,
    ) -> None:
        if workers < 1:
            raise EngineError(f"--workers must be at least 1 (got {workers})")
        self.config_dir = config_dir
        self.host, self.port, self.workers = host, port, workers
        self.binary = binary or find_litellm(env)
        self.env = litellm_env(host, env)
        self.workdir = Path(tempfile.mkdtemp(prefix="aib-litellm-"))
        self.config_path = self.workdir / GENERATED_FILE
        try:
            _, self.notes = write_config(config_dir, self.config_path)
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        self.base_url = url
        self.supervisor = Supervisor(
            "litellm",
            litellm_command(self.binary, self.config_path, host, port, workers),
            ready=lambda: http_ok(url + READY_PATH),
            env=self.env,
            cwd=self.workdir,
            backoff=backoff,
            ready_timeout_s=ready_timeout_s,
            max_start_failures=max_start_failures,
            log_path=log_path,
            on_hup=self.reload,
        )

    def reload(self) -> bool:
        """Regenerate the config; restart the proxy when it changed. False when nothing changed or the
        config is bad (the proxy keeps running on the old file; the errors are logged)."""
        from aib.config.errors import ConfigError

        try:
            changed, _ = write_config(self.config_dir, self.config_path)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("%s", issue)
            log.error("reload: configuration not used; LiteLLM keeps running on the previous one")
            return False
        if not changed:
            log.info("reload: the generated LiteLLM config did not change; nothing to do")
            return False
        log.warning("reload: config changed; restarting LiteLLM (requests in flight are cut)")
        self.supervisor.request_restart()
        return True

    def run(self, handle_signals: bool = False) -> int:
        """Serve until stopped; 0 after a clean stop. The generated config is deleted afterwards."""
        restore = None
        try:
            check_port_free(self.host, self.port)
            log.info(
                "LiteLLM engine: %s --config %s (from %s)", self.binary, self.config_path, self.config_dir
            )
            for note in self.notes:
                log.warning("not in LiteLLM: %s", note)
            if PERMIT_OPEN_ENV in self.env and not self.env.get(MASTER_KEY_ENV):
                log.warning(
                    "no $%s: LiteLLM accepts every request on %s (loopback only)", MASTER_KEY_ENV, self.host
                )
            restore = self.supervisor.install_signal_handlers() if handle_signals else None
            return self.supervisor.run()
        except SupervisorError as exc:
            raise EngineError(str(exc)) from None
        finally:
            if restore is not None:
                restore()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self) -> None:
        self.supervisor.request_stop()


def workers_from_env(env: Mapping[str, str] | None = None) -> int:
    """``$AIB_LITELLM_WORKERS`` (default 1): LiteLLM worker processes, each ~400 MB."""
    raw = (os.environ if env is None else env).get(WORKERS_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise EngineError(f"${WORKERS_ENV}={raw!r}: use a whole number of worker processes, at least 1")
    return int(raw)


def serve_litellm(config_dir: Path, host: str, port: int, workers: int | None = None) -> int:
    """``aib serve --engine litellm``: blocks until SIGTERM/SIGINT; 0 after a clean stop."""
    workers = workers_from_env() if workers is None else workers
    engine = LiteLLMEngine(config_dir, host=host, port=port, workers=workers)
    log.info("LiteLLM engine starting on %s (LiteLLM takes 10-30 s to become ready)", engine.base_url)
    return engine.run(handle_signals=True)
