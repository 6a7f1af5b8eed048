"""pyconcepts: concept-based explanations of CNN image classifiers.

Five methods (MACE, SRAE, AfI, filter-pattern mining, IBD) over one compiled core
(C++/OpenMP and CUDA kernels, with pure-torch reference twins), exportable to ONNX.

The public surface is imported lazily so ``import pyconcepts`` stays cheap.
"""

from __future__ import annotations

from pyconcepts._lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "backends": ("pyconcepts._backends", "backends"),
    "NotFittedError": ("pyconcepts.errors", "NotFittedError"),
    "LoadError": ("pyconcepts.errors", "LoadError"),
    "ConceptWorld": ("pyconcepts.data.concept_world", "ConceptWorld"),
    "FeatureExtractor": ("pyconcepts.models.features", "FeatureExtractor"),
    "Explanation": ("pyconcepts.explanation", "Explanation"),
    "ops": ("pyconcepts.ops", None),
    "models": ("pyconcepts.models", None),
    "data": ("pyconcepts.data", None),
    "explainers": ("pyconcepts.explainers", None),
    "metrics": ("pyconcepts.metrics", None),
    "attribution": ("pyconcepts.attribution", None),
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
