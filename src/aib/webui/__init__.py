"""The web UI (Gradio, :5001): chat, N-way compare, analytics, history and health.

A client of the gateway like any other (the official ``openai`` client), plus read-only access to
the request log (:mod:`aib.observe.requestquery`). Never imports ``aib.gateway``. Nothing happens at
import: ``create_ui(gateway_url, request_log_path)`` builds the app, ``launch_ui`` serves it.
Needs the ``ui`` extra (``pip install -e '.[ui]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aib.webui.app import close_ui, create_ui, launch_ui

__all__ = ["close_ui", "create_ui", "launch_ui"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aib.webui import app

        return getattr(app, name)
    raise AttributeError(f"module 'aib.webui' has no attribute {name!r}")
