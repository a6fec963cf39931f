"""ai-backend-unified: one OpenAI-compatible endpoint for a lab's inference servers."""

__version__ = "0.1.0"
