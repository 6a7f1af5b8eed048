"""The one place that imports Ray: with a clear message naming the extra when it is missing."""

from __future__ import annotations

import importlib
from typing import Any


def require(module: str = "ray") -> Any:
    """Import ``module`` (``ray`` or one of its submodules), or raise ImportError saying how to
    install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed for pyconcepts.distributed: pip install 'pyconcepts[distributed]' "
            f"(Ray 2.x with Ray Data); import failed with: {exc}"
        ) from exc
