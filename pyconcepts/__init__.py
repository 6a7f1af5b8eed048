"""pyconcepts: concept-based explanations of CNN image classifiers.

Five methods (MACE, SRAE, AfI, filter-pattern mining, IBD) over one compiled core
(C++/OpenMP and CUDA kernels, with pure-torch reference twins), exportable to ONNX.

The public surface is imported lazily so ``import pyconcepts`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pyconcepts' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
