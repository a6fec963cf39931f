"""Pure translation between the APIs the gateway speaks and its one internal shape (OpenAI chat).

Each module turns dicts into dicts and bytes into bytes, in both directions, and owns no socket and
no clock (the "sans-I/O" style of h11): what a translation needs from the outside world (the time, an
id, the model's context length) is an argument. Front doors (:mod:`aib.doors`) use the
``*_to_openai`` requests and ``*_from_openai`` answers; the outbound adapters
(:mod:`aib.gateway.outbound`) use the same modules the other way round, which is what the round-trip
property tests check.

* :mod:`~aib.codecs.common` - errors naming the field, SSE framing, images, finish reasons.
* :mod:`~aib.codecs.openai_sse` - the internal stream (``data: {chunk}`` ... ``data: [DONE]``) read
  and written.
* :mod:`~aib.codecs.anthropic`, :mod:`~aib.codecs.anthropic_stream` - Anthropic Messages.
* :mod:`~aib.codecs.ollama`, :mod:`~aib.codecs.ollama_stream` - Ollama's native API.
* :mod:`~aib.codecs.responses`, :mod:`~aib.codecs.responses_stream` - OpenAI Responses.
"""
