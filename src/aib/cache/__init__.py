"""The response cache: a stage of the request path between "may" and "route" (docs/scaling.md).

``keys`` says which requests may be answered from the cache and under which key (route, not
deployment; the whole request but ``stream``; per client key unless a route shares); ``assemble``
turns a streamed answer into the whole answer it stands for, and ``replay`` turns a whole answer back
into a stream (both pure, no I/O); ``entry`` is what is stored; ``memory`` and ``redis_store`` keep
entries; ``stage`` is the one object the gateway calls (lookup, replay, capture, store); ``admin``
serves ``/admin/cache`` for ``aib cache``.

Everything here works on the internal, OpenAI-shaped request and answer: a front door re-encodes a
replayed answer like any other.
"""
