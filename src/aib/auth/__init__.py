"""Client keys: who is asking (``keys``, ``store``), which models a key may use (``access``), and
the stage of the request path that puts them together with the limits (``gate``).

Keys are random 190-bit secrets shown once at creation and stored only as their SHA-256. A key
belongs to a name (a person or a project) and carries its allowed models, its limits and budgets, an
expiry and free-form metadata. See docs/security.md.
"""
