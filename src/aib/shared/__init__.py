"""State that gateway replicas share through Redis (docs/scaling.md).

:mod:`aib.shared.link` is the one connection to the configured server, with its health: the key store
(:mod:`aib.auth.redis_store`), the limits (:mod:`aib.limits.remote`) and the response cache
(:mod:`aib.cache.redis_store`) all go through it, and all of them treat Redis being down the same way:
the request is served without it (or refused, for limits with ``on_redis_error: deny``), one
warning is logged per outage, and a background probe reconnects.
"""
