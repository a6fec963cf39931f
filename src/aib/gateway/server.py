"""Run the native engine: load the config, build the app, serve it with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from aib.config.compile import build_plan
from aib.config.load import DEFAULTS_DIR, PROVIDERS_FILE
from aib.gateway.app import Gateway, create_app
from aib.gateway.settings import GatewaySettings
from aib.observe import install_observability
from aib.observe.logs import configure_logging
from aib.observe.settings import ObserveSettings

log = logging.getLogger("aib.gateway")


def choose_config_dir(config_dir: Path | None) -> Path:
    """The given folder; else ./config when it has the files; else the defaults shipped in the package."""
    if config_dir is not None:
        return config_dir
    local = Path("config")
    return local if (local / PROVIDERS_FILE).exists() else DEFAULTS_DIR


def build_gateway(settings: GatewaySettings, observe: ObserveSettings | None = None) -> Gateway:
    """The gateway for ``settings``, with metrics, access log and request log (``observe``, default from env)."""
    cdir = choose_config_dir(settings.config_dir)
    plan, cfg, warnings = build_plan(cdir)
    for w in warnings:
        log.warning("%s", w)
    log.info(
        "config %s (version %s): %d providers, %d routes, %d patterns",
        cdir,
        plan.version,
        len(plan.providers),
        len(plan.groups),
        len(plan.patterns),
    )
    gateway = create_app(plan, settings, cfg)
    install_observability(gateway, observe or ObserveSettings.from_env())
    from aib.reload import install_reload  # the layer above the gateway; imported when a server is built

    install_reload(gateway, None if cdir == DEFAULTS_DIR else cdir)
    return gateway


def serve(settings: GatewaySettings, log_level: str = "info", observe: ObserveSettings | None = None) -> None:
    observe = observe or ObserveSettings.from_env()
    configure_logging(observe.log_format, log_level)
    app = build_gateway(settings, observe)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        log_config=None,  # uvicorn's records go to the root handler set by configure_logging
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        server_header=False,
        date_header=False,
    )
    server = uvicorn.Server(config)
    log.info("gateway listening on http://%s:%d", settings.host, settings.port)
    server.run()
