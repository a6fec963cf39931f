"""Benchmarks of the gateway: ``aib bench`` measures direct vs native engine vs LiteLLM in one run.

* :mod:`~aib.benchmark.client` - the raw-socket measuring client and interleaved sequential pairs;
* :mod:`~aib.benchmark.load` - load at a fixed concurrency for a bounded time (``wrk``, else asyncio);
* :mod:`~aib.benchmark.procs` - child processes (started and stopped by PID), RSS, CPU, the machine;
* :mod:`~aib.benchmark.stats` - percentiles, best-of-rounds and the targets;
* :mod:`~aib.benchmark.runner` - the whole run; :mod:`~aib.benchmark.report` - table, JSON, chart.

``bench/choose_stack.py`` (how the server and client were chosen) uses the same pieces.
"""
