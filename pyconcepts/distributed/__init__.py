"""Scaling past one machine on Ray (the ``[distributed]`` extra): dataset-scale explanation on
Ray Data, SON frequent-itemset mining over shards, and distributed fitting of IBD.

- :func:`explain_dataset` / :func:`load_explanations` — explain a folder or parquet data set of
  any size into resumable parquet shards (:mod:`pyconcepts.distributed.dataset`);
- :func:`son_frequent_itemsets` — frequent itemsets of sharded transactions, exactly equal to
  single-machine mining (:mod:`pyconcepts.distributed.itemsets`);
- :func:`sharded_basis`, :func:`ddp_concept_trainer`, :func:`ray_map` — IBD's class bases
  sharded over targets, its concept classifiers under torch DDP, AfI's occluders one class per
  Ray task and SRAE's class autoencoders one part of classes per task
  (:mod:`pyconcepts.distributed.fitting`).

Importing this package does not import Ray; each function imports it when called and says how
to install it when it is missing. Each uses the Ray cluster ``ray.init`` connected to, starting
a local one when none is.
"""

from __future__ import annotations

from pyconcepts._lazy import lazy_exports

_EXPORTS = {
    "DatasetRun": "dataset",
    "explain_dataset": "dataset",
    "load_explanations": "dataset",
    "son_frequent_itemsets": "itemsets",
    "ddp_concept_trainer": "fitting",
    "sharded_basis": "fitting",
    "ray_map": "fitting",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(
    __name__, {n: f"{__name__}.{m}" for n, m in _EXPORTS.items()}, globals()
)
