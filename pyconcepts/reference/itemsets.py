"""Plain-Python twins of ``pyconcepts.ops.itemsets``: same names, signatures and results.

Tidsets are Python sets and mining is textbook depth-first eclat; slow, but obviously correct,
so the tests compare the compiled core with it. ``association_rules`` has no kernel: the one
implementation in ``pyconcepts.opspec.itemsets`` serves both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional, Union

import numpy as np

from pyconcepts.opspec import transactions as _tx
from pyconcepts.opspec.itemsets import Itemset, Rule, association_rules

__all__ = ["Rule", "association_rules", "frequent_itemsets", "itemset_support"]


def _tidsets(transactions: _tx.Transactions) -> tuple[int, dict[int, set[int]]]:
    indptr, indices = _tx.as_csr(transactions)
    tidsets: dict[int, set[int]] = {}
    flat = indices.tolist()
    for t in range(indptr.size - 1):
        for item in flat[indptr[t] : indptr[t + 1]]:
            tidsets.setdefault(item, set()).add(t)
    return indptr.size - 1, tidsets


def frequent_itemsets(
    transactions: _tx.Transactions,
    min_support: Union[int, float],
    max_len: Optional[int] = None,
    *,
    max_itemsets: Optional[int] = None,
    backend: Optional[str] = None,
) -> list[tuple[Itemset, int]]:
    """Every itemset with support >= ``min_support`` (see ``pyconcepts.ops.frequent_itemsets``)."""
    del backend  # the reference has a single implementation
    n, tidsets = _tidsets(transactions)
    count = _tx.min_count(min_support, n)
    limit = _tx.max_len(max_len) or float("inf")
    cap = _tx.positive_or_none(max_itemsets, "max_itemsets") or float("inf")
    found: list[tuple[Itemset, int]] = []

    def grow(prefix: Itemset, extensions: list[tuple[int, set[int]]]) -> None:
        for k, (item, tids) in enumerate(extensions):
            itemset = (*prefix, item)
            found.append((itemset, len(tids)))
            if len(found) > cap:
                raise ValueError(
                    f"frequent_itemsets: more than {max_itemsets} itemsets reach min_support "
                    "(max_itemsets); raise min_support, set max_len or raise max_itemsets"
                )
            if len(itemset) < limit:
                deeper = [(other, tids & more) for other, more in extensions[k + 1 :]]
                grow(itemset, [(other, both) for other, both in deeper if len(both) >= count])

    grow((), sorted((i, tids) for i, tids in tidsets.items() if len(tids) >= count))
    found.sort(key=lambda entry: (len(entry[0]), entry[0]))
    return found


def itemset_support(
    transactions: _tx.Transactions,
    itemsets: Iterable[Iterable[int]],
    *,
    backend: Optional[str] = None,
) -> np.ndarray:
    """Support count of each query itemset (see ``pyconcepts.ops.itemset_support``)."""
    del backend
    n, tidsets = _tidsets(transactions)
    q_offsets, q_items = _tx.as_queries(itemsets)
    counts = []
    for query in _tx.split(q_offsets, q_items):
        tids = set(range(n))
        for item in query:
            tids &= tidsets.get(item, set())
        counts.append(len(tids))
    return np.asarray(counts, dtype=np.int64)
