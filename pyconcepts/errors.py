"""Exception types of pyconcepts."""

from __future__ import annotations


class NotFittedError(RuntimeError):
    """An explainer was used before ``fit`` (or ``load``) gave it its learned state."""


class LoadError(ValueError):
    """A saved file could not be loaded: missing, corrupt, of another format or version."""
