"""Public kernel API. Each op validates its arguments, picks a backend (cuda / cpu / reference)
and calls the compiled core; ``pyconcepts.reference`` holds the pure-torch twin of each op.

Imports are lazy so that ``import pyconcepts.ops`` does not load every op module. Some ops share
their module's name (``concept_maps``, ``nnls``): the package keeps the *function* bound under
that name even after the submodule is imported (see ``_OpsModule``).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from pyconcepts._lazy import lazy_exports

if TYPE_CHECKING:  # type checkers see the functions, not the same-named submodules
    from pyconcepts.ops.concept_maps import ConceptMapStats as ConceptMapStats
    from pyconcepts.ops.concept_maps import concept_map_stats as concept_map_stats
    from pyconcepts.ops.concept_maps import concept_maps as concept_maps
    from pyconcepts.ops.nnls import BasisFit as BasisFit
    from pyconcepts.ops.nnls import greedy_nnls_basis as greedy_nnls_basis
    from pyconcepts.ops.nnls import nnls as nnls

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


class _OpsModule(types.ModuleType):
    """Keeps ``pyconcepts.ops.nnls`` the function when the submodule of the same name is imported
    (the import system would otherwise bind the submodule over the lazily exported function)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _OpsModule
