"""Limits per client key: requests and tokens per minute (GCRA, :mod:`aib.limits.gcra`), requests in
flight, and token budgets per UTC day and month.

``limiter`` is the stage the request path calls (admit before routing, settle after the answer);
``slots`` keeps the per-key counters, in this process (one gateway process) or in shared memory
(``aib serve --workers N``: every worker sees the same counters); ``budgets`` checks the day and
month totals the key store sums across processes. docs/security.md says why GCRA.
"""

# the `code` of a 429 a key's limit answered (the request log, metrics and usage count them)
LIMIT_CODES = frozenset(
    {"concurrent_requests", "requests_per_minute", "tokens_per_minute", "tokens_per_day", "tokens_per_month"}
)
