"""Front doors: the APIs clients speak on the gateway's port, as codecs around one request path.

Every door decodes what its clients send into the internal request (the OpenAI chat/completions,
completions or embeddings shape) and encodes the answer back (JSON, SSE, NDJSON, Anthropic events).
Routing, keys, limits and observability see only the internal shape. A door owns no socket and no
clock: :mod:`aib.doors.base` says what one provides.
"""
