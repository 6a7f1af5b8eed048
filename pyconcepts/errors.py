"""Exception types of pyconcepts."""

from __future__ import annotations

import torch


class NotFittedError(RuntimeError):
    """An explainer was used before ``fit`` (or ``load``) gave it its learned state."""


class LoadError(ValueError):
    """A saved file could not be loaded: missing, corrupt, of another format or version."""


class OutOfMemoryError(MemoryError, torch.OutOfMemoryError):
    """An explainer ran out of (CPU or GPU) memory; the explainer is left as it was before the
    call, so the call can be repeated with fewer images or a smaller ``batch_size``. The
    original error is its ``__cause__``; ``except torch.OutOfMemoryError`` and ``except
    MemoryError`` both catch it."""


class EmptyHeatmapWarning(UserWarning):
    """Every concept heatmap of an image is zero: nothing at the explained layer supports its
    target, so the explanation has no spatial evidence (the maps stay zero, never NaN)."""
