"""Run llama.cpp's own ``llama-server`` (built by :mod:`aib.devtools.llama_server_build`) for tests.

>>> with LlamaServer(ensure_model(), binary=find_binary()) as srv:   # doctest: +SKIP
...     OpenAI(base_url=srv.base_url, api_key="x").chat.completions.create(...)

The same process handling as :class:`~aib.devtools.llamacpp.LlamaCppServer` (own process group, a log
file, stopped by PID), with llama-server's flags. Behaviour worth knowing (measured, see the tests):

* ``--parallel N`` gives N slots that decode together; a request that finds no free slot waits
  (``llamacpp:requests_deferred`` in ``/metrics``, which needs ``--metrics``); ``/slots`` lists the
  slots with ``is_processing``.
* Each slot keeps its prompt's KV cache, and evicted prompts go to a host-memory prompt cache
  (``--cache-ram``): a request whose prompt starts like an earlier one only computes the rest
  (``timings.cache_n`` in the answer). This is what prefix affinity keeps warm.
* ``GET /health`` answers 503 while the model loads, then 200; ``/v1/models`` lists the alias.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aib.devtools.llamacpp import HOST, LlamaCppServer


class LlamaServer(LlamaCppServer):
    """A ``llama-server`` child process serving ``model`` as ``alias`` on ``127.0.0.1:port``."""

    label = "llama-server"

    def __init__(
        self,
        model: Path | str,
        *,
        binary: Path | str,
        alias: str = "smollm2",
        port: int | None = None,
        n_ctx: int = 4096,
        n_threads: int = 1,
        parallel: int = 2,
        metrics: bool = True,
        extra_args: Sequence[str] = (),
        log_path: Path | str | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            model,
            alias=alias,
            port=port,
            n_ctx=n_ctx,
            n_threads=n_threads,
            extra_args=extra_args,
            log_path=log_path,
            startup_timeout=startup_timeout,
        )
        self.binary = Path(binary)
        self.parallel = parallel
        self.metrics = metrics

    def command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "--model", str(self.model),
            "--host", HOST,
            "--port", str(self.port),
            "--ctx-size", str(self.n_ctx),
            "--threads", str(self.n_threads),
            "--threads-batch", str(self.n_threads),
            "--parallel", str(self.parallel),
            "--alias", self.alias,
            "--no-webui",
        ]  # fmt: skip
        if self.metrics:
            cmd.append("--metrics")
        return cmd + self.extra_args


__all__ = ["LlamaServer"]
