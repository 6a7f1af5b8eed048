"""The five explainers, imported lazily; all follow ``base.ConceptExplainer``."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ConceptExplainer": "pyconcepts.explainers.base",
    "Explanation": "pyconcepts.explanation",
    "MACE": "pyconcepts.explainers.mace",
    "SRAE": "pyconcepts.explainers.srae",
    "AfI": "pyconcepts.explainers.afi",
    "FilterPatterns": "pyconcepts.explainers.pattern_mining",
    "IBD": "pyconcepts.explainers.ibd",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pyconcepts.explainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
