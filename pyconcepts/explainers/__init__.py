"""The five explainers, imported lazily; all follow ``base.ConceptExplainer``."""

from __future__ import annotations

from pyconcepts._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
