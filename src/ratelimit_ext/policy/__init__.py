"""Policy: the model, its loading and validation, and request matching."""
