"""Providers of type ``litellm_sdk``: their options, how the options travel, where the adapter's Python is.

A ``litellm_sdk`` provider is served by the LiteLLM SDK adapter (:mod:`aib.engines.sdk_adapter`), a small
process the gateway runs on the provider's loopback ``base_url``. The gateway talks OpenAI-compatible
HTTP to it like to any provider; the adapter calls ``litellm.acompletion`` / ``aembedding`` with the
provider's LiteLLM model string.

The adapter keeps no configuration of its own: every request carries its provider's options in one
header (:data:`CONFIG_HEADER`, base64url JSON of :class:`SdkOptions`, built once per provider), the
API key as ``Authorization: Bearer`` (read by the gateway from the variable named in ``api_key_env``,
as for every provider) and the gateway's adapter token (:data:`TOKEN_HEADER`). So a reload that changes a provider needs no adapter restart, requests in
flight finish with the options they started with, and the adapter holds no secret.

Standard library only: the adapter imports this module under ``.venv-litellm``'s Python, where only
the ``aib`` package folder is on the path.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_HEADER = "x-aib-litellm"
# The adapter answers only its gateway: a random token the gateway puts in its own environment (which
# the adapters inherit) and sends with every request. Without it a local process could have the adapter
# call LiteLLM with credentials LiteLLM reads from the environment (AWS_*, ...).
TOKEN_ENV = "AIB_SDK_ADAPTER_TOKEN"
TOKEN_HEADER = "x-aib-adapter-token"
NOT_INSTALLED = "LiteLLM SDK adapter not installed: run `make litellm`"
DEFAULT_ADAPTER_URL = "http://127.0.0.1:4010"
MODEL_PLACEHOLDER = "{model}"
PYTHON_ENV = "AIB_LITELLM_PYTHON"  # the Python that runs the adapter (must have litellm)
BIN_ENV = "AIB_LITELLM_BIN"  # the LiteLLM engine's executable: its venv's python is used too
VENV_DIR = ".venv-litellm"
# litellm keyword arguments the adapter sets itself: `litellm_params` may not set them
RESERVED_PARAMS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "input",
        "stream",
        "api_key",
        "api_base",
        "base_url",
        "timeout",
        "num_retries",
        "max_retries",
        "drop_params",
        "custom_llm_provider",
        "mock_response",
    }
)
SECRET_WORDS = ("key", "secret", "token", "password", "credential")


@dataclass(frozen=True)
class SdkOptions:
    """What the adapter needs to serve one provider's requests (compiled from ``providers.yaml``)."""

    provider: str
    model: str | Mapping[str, str]  # template with {model}, a fixed model string, or name -> model string
    api_base: str | None = None
    api_key_env: str | None = None  # the variable's NAME (the adapter says which one is unset)
    timeout_s: float = 600.0
    drop_params: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] = ()

    def litellm_model(self, name: str) -> str | None:
        """The LiteLLM model string for the model name a route sends; None when a mapping lacks it."""
        if isinstance(self.model, str):
            return self.model.replace(MODEL_PLACEHOLDER, name)
        return self.model.get(name)

    def listed_models(self) -> tuple[str, ...]:
        """Model names this provider answers to by configuration (``/v1/models`` of the adapter)."""
        names = list(self.models)
        if not isinstance(self.model, str):
            names += [m for m in self.model if m not in names]
        return tuple(names)

    def to_header(self) -> str:
        doc = {
            "provider": self.provider,
            "model": self.model if isinstance(self.model, str) else dict(self.model),
            "api_base": self.api_base,
            "api_key_env": self.api_key_env,
            "timeout_s": self.timeout_s,
            "drop_params": self.drop_params,
            "params": dict(self.params),
            "models": list(self.models),
        }
        raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def from_header(cls, value: str) -> SdkOptions:
        """Parse :data:`CONFIG_HEADER`; ValueError saying what is wrong."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{CONFIG_HEADER} is not base64url JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{CONFIG_HEADER} must hold a JSON object")
        model = doc.get("model")
        provider = doc.get("provider")
        if not isinstance(provider, str) or not provider:
            raise ValueError(f"{CONFIG_HEADER}: `provider` must be a non-empty string")
        if not (isinstance(model, str) and model) and not (
            isinstance(model, dict) and all(isinstance(v, str) for v in model.values())
        ):
            raise ValueError(f"{CONFIG_HEADER}: `model` must be a string or a mapping of strings")
        params = doc.get("params")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ValueError(f"{CONFIG_HEADER}: `params` must be a mapping")
        try:
            timeout = float(doc.get("timeout_s", 600.0))
        except (TypeError, ValueError):
            raise ValueError(f"{CONFIG_HEADER}: `timeout_s` must be a number") from None
        return cls(
            provider=provider,
            model=model,
            api_base=doc.get("api_base") or None,
            api_key_env=doc.get("api_key_env") or None,
            timeout_s=timeout,
            drop_params=bool(doc.get("drop_params", True)),
            params=params,
            models=tuple(str(m) for m in doc.get("models") or ()),
        )


def param_problem(name: str) -> str | None:
    """Why ``litellm_params.<name>`` is not allowed, or None."""
    if name in RESERVED_PARAMS:
        return f"`{name}` is set by the adapter itself (from the request and this provider's keys)"
    low = name.lower()
    if any(w in low for w in SECRET_WORDS):
        return (
            f"`{name}` looks like a credential: credentials never go in the file; put the key's variable "
            "name in `api_key_env`, or set the variable LiteLLM reads for this provider in the environment"
        )
    return None


# --------------------------------------------------------------------------- where the adapter's Python is


@dataclass(frozen=True)
class AdapterPython:
    """The interpreter that runs the adapter, and whether LiteLLM is there."""

    path: str
    installed: bool
    how: str  # where it was found, for messages
    version: str | None = None  # litellm's version when known

    @property
    def problem(self) -> str | None:
        return None if self.installed else f"{NOT_INSTALLED} ({self.how})"


def project_roots() -> list[Path]:
    """Where ``.venv-litellm`` may be: the working folder and, in a checkout, the project root."""
    here = Path(__file__).resolve()
    roots = [Path.cwd()]
    if len(here.parents) > 3 and (here.parents[3] / "pyproject.toml").exists():
        roots.append(here.parents[3])
    return roots


def litellm_version(python: Path) -> str | None:
    """LiteLLM's version in the venv of ``python`` (from its dist-info), None when it is not there."""
    lib = python.parent.parent / "lib"
    for site in sorted(lib.glob("python3*/site-packages")):
        if (site / "litellm" / "__init__.py").is_file():
            infos = sorted(site.glob("litellm-*.dist-info"))
            return infos[-1].name.removeprefix("litellm-").removesuffix(".dist-info") if infos else "?"
    return None


def _can_import_litellm(python: Path) -> bool:
    """Whether ``python`` finds a litellm package (located, not imported: importing takes seconds)."""
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('litellm') else 1)"
    try:
        return subprocess.run([str(python), "-c", code], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_adapter_python(
    env: Mapping[str, str] | None = None, roots: list[Path] | None = None
) -> AdapterPython:
    """``$AIB_LITELLM_PYTHON``; else the python beside ``$AIB_LITELLM_BIN``; else ``.venv-litellm``'s;
    else this Python when it has litellm. Without LiteLLM anywhere, this Python (the adapter then answers
    every request with :data:`NOT_INSTALLED`)."""
    e = os.environ if env is None else env
    explicit = e.get(PYTHON_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            version = litellm_version(path)
            if version is None and not _can_import_litellm(path):
                return AdapterPython(str(path), False, f"${PYTHON_ENV}={explicit} has no litellm package")
            return AdapterPython(str(path), True, f"${PYTHON_ENV}={explicit}", version or "?")
        return AdapterPython(sys.executable, False, f"${PYTHON_ENV}={explicit} is not an executable file")
    candidates: list[tuple[Path, str]] = []
    if e.get(BIN_ENV):
        candidates.append((Path(e[BIN_ENV]).expanduser().parent / "python", f"beside ${BIN_ENV}"))
    candidates += [(r / VENV_DIR / "bin" / "python", f"{r / VENV_DIR}") for r in (roots or project_roots())]
    for path, how in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            version = litellm_version(path)
            if version is not None:
                return AdapterPython(str(path), True, how, version)
    here = Path(sys.executable)
    version = litellm_version(here)
    if version is not None:
        return AdapterPython(sys.executable, True, "this Python", version)
    where = ", ".join(str(r / VENV_DIR) for r in (roots or project_roots()))
    return AdapterPython(sys.executable, False, f"no LiteLLM in {where} or in this Python")
