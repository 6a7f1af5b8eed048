"""Public kernel API. Each op validates its arguments, picks a backend (cuda / cpu / reference)
and calls the compiled core; ``pyconcepts.reference`` holds the pure-torch twin of each op.

Imports are lazy so that ``import pyconcepts.ops`` does not load every op module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers see the functions, not the same-named submodules
    from pyconcepts.ops.concept_maps import ConceptMapStats as ConceptMapStats
    from pyconcepts.ops.concept_maps import concept_map_stats as concept_map_stats
    from pyconcepts.ops.concept_maps import concept_maps as concept_maps

_LAZY = {
    "resolve_backend": "pyconcepts.ops._dispatch",
    "concept_maps": "pyconcepts.ops.concept_maps",
    "concept_map_stats": "pyconcepts.ops.concept_maps",
    "ConceptMapStats": "pyconcepts.ops.concept_maps",
    "semihard_triplet_loss": "pyconcepts.ops.triplet",
    "semihard_triplets": "pyconcepts.ops.triplet",
    "nnls": "pyconcepts.ops.nnls",
    "greedy_nnls_basis": "pyconcepts.ops.nnls",
    "BasisFit": "pyconcepts.ops.nnls",
    "frequent_itemsets": "pyconcepts.ops.itemsets",
    "itemset_support": "pyconcepts.ops.itemsets",
    "association_rules": "pyconcepts.ops.itemsets",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pyconcepts.ops' has no attribute {name!r}")
    source = _LAZY[name]
    module = importlib.import_module(source)
    # Importing pyconcepts.ops.<op> binds the submodule as an attribute of this package, which
    # would shadow a function of the same name (concept_maps, nnls): bind all of its exports now.
    for exported, where in _LAZY.items():
        if where == source:
            globals()[exported] = getattr(module, exported)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(__all__)
