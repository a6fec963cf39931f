"""Engines other than the native one: processes that serve the gateway's port from the same config.

``aib serve --engine litellm`` runs the real LiteLLM proxy (:mod:`aib.engines.litellm`) under a
supervisor (:mod:`aib.engines.supervisor`). The native engine lives in :mod:`aib.gateway`.
"""
