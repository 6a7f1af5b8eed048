"""Frequent itemsets over sharded transactions with the SON algorithm, on Ray.

Savasere, Omiecinski & Navathe (VLDB 1995): an itemset with support count ≥ m in all n
transactions has, in at least one shard of n_s transactions, a local count ≥ m·n_s/n (were it
below in every shard, the counts would sum below m). So

1. each shard is mined on its own (:func:`pyconcepts.ops.frequent_itemsets`) at the scaled
   threshold ``ceil(m·n_s/n)`` — the union of these local results holds every globally
   frequent itemset;
2. one pass counts every candidate in every shard (:func:`pyconcepts.ops.itemset_support`)
   and keeps those whose summed count reaches m.

The result is exactly :func:`pyconcepts.ops.frequent_itemsets` of all transactions together,
in the same order. Shards are Ray tasks; a shard may be given as a Ray ``ObjectRef``, so
transactions already in the cluster never pass through the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from pyconcepts.distributed._ray import require
from pyconcepts.opspec import transactions as _tx

Itemset = tuple[int, ...]


def son_frequent_itemsets(
    shards: Sequence[Any],
    min_support: Union[int, float],
    max_len: Optional[int] = None,
    *,
    max_candidates: Optional[int] = None,
) -> list[tuple[Itemset, int]]:
    """Every itemset whose support over all ``shards`` reaches ``min_support``, with its
    count — equal to ``frequent_itemsets`` of the shards' transactions concatenated.

    Args:
        shards: transaction databases (each what :func:`pyconcepts.ops.frequent_itemsets`
            accepts: a sequence of iterables of ints or a CSR pair), or Ray ObjectRefs of them.
        min_support: an int count, or a float fraction of all transactions (same rule as
            ``frequent_itemsets``).
        max_len: longest itemset reported (None: no limit).
        max_candidates: raise ValueError when one shard's local mining finds more itemsets than
            this (None: no limit); local thresholds are lower than the global one, so this
            caps the memory of the candidate pass.
    """
    ray = require()
    if isinstance(shards, (str, bytes)) or not isinstance(shards, Sequence):
        raise TypeError(
            f"shards: expected a sequence of transaction databases, got {type(shards).__name__}"
        )
    _tx.max_len(max_len)  # argument errors before any task runs
    _tx.positive_or_none(max_candidates, "max_candidates")
    if not ray.is_initialized():
        ray.init()
    refs = [s if isinstance(s, ray.ObjectRef) else ray.put(s) for s in shards]
    size, mine, count = (ray.remote(f) for f in (_size, _mine, _count))
    sizes = ray.get([size.remote(r) for r in refs])
    n = sum(sizes)
    if n == 0:
        return []
    m = _tx.min_count(min_support, n)
    local = [
        mine.remote(r, (m * n_s + n - 1) // n, max_len, max_candidates)  # ceil(m·n_s/n)
        for r, n_s in zip(refs, sizes)
        if n_s
    ]
    candidates = sorted({items for part in ray.get(local) for items in part})
    if not candidates:
        return []
    query = ray.put(candidates)
    totals = np.sum(ray.get([count.remote(r, query) for r in refs]), axis=0)
    found = [(items, int(c)) for items, c in zip(candidates, totals) if c >= m]
    return sorted(found, key=lambda entry: (len(entry[0]), entry[0]))


def _size(transactions: Any) -> int:
    if _tx.is_csr(transactions):
        return int(len(transactions[0]) - 1)
    if isinstance(transactions, (str, bytes)) or not isinstance(transactions, Sequence):
        raise TypeError(
            "shards: each shard must be a sequence of iterables of ints or a CSR pair, got "
            f"{type(transactions).__name__}"
        )
    return len(transactions)


def _mine(
    transactions: Any, count: int, max_len: Optional[int], cap: Optional[int]
) -> list[Itemset]:
    from pyconcepts.ops import frequent_itemsets

    return [items for items, _ in frequent_itemsets(transactions, count, max_len,
                                                     max_itemsets=cap)]  # fmt: skip


def _count(transactions: Any, candidates: list[Itemset]) -> Any:
    from pyconcepts.ops import itemset_support

    return np.asarray(itemset_support(transactions, candidates), dtype=np.int64)


__all__ = ["son_frequent_itemsets"]
