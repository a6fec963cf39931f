"""The gateway benchmark: direct vs native engine vs LiteLLM, in one run. The same as ``aib bench``.

    .venv/bin/python bench/gateway_bench.py              # ~4 minutes; --quick ~1 minute
    .venv/bin/python bench/gateway_bench.py --no-litellm --rounds 3
    .venv/bin/python bench/gateway_bench.py --help       # every option of `aib bench`

Writes bench/results/gateway_bench.{json,md,png}. The code is in src/aib/benchmark/.
"""

from __future__ import annotations

import sys

from aib.cli.main import app

if __name__ == "__main__":
    app(args=["bench", *sys.argv[1:]], prog_name="gateway_bench.py")
