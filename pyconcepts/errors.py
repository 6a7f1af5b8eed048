"""Exception types of pyconcepts, and the argument check they share."""

from __future__ import annotations

from typing import Any

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


def check_positive_ints(**values: Any) -> None:
    """Raise ``ValueError`` naming the first argument that is not an int >= 1 (bools refused)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
