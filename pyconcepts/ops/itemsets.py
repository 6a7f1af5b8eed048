"""Frequent itemsets, itemset supports and association rules over transaction databases.

Transactions are a sequence of iterables of integer item ids, or a CSR pair ``(indptr, indices)``
of 1-D integer numpy arrays / torch tensors (transaction ``t`` = ``indices[indptr[t]:indptr[t+1]]``,
the fast path for large databases). Ids may be negative or huge (they are renumbered); an item
repeated inside a transaction counts once; empty transactions count in the total.

The compiled core mines with depth-first eclat on vertical bitsets (one bit per transaction per
item, AND + popcount), parallel over first-level branches; the pure-Python twin in
``pyconcepts.reference.itemsets`` gives the same results. Support counting of many query itemsets
also runs on CUDA when the CSR arrays are CUDA tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional, Union

import numpy as np
import torch

from pyconcepts import _backends
from pyconcepts.ops import _bridge
from pyconcepts.opspec import transactions as _tx
from pyconcepts.opspec.itemsets import Itemset, Rule, association_rules

__all__ = ["Rule", "association_rules", "frequent_itemsets", "itemset_support"]

_CPU = torch.device("cpu")


def _use_core(backend: Optional[str], allow_cuda: bool = False) -> bool:
    """True for the compiled CPU core, False for the reference twin."""
    allowed = ("cpu", "reference", "cuda") if allow_cuda else ("cpu", "reference")
    if backend is not None and backend not in allowed:
        raise ValueError(f"backend: expected one of {allowed} or None, got {backend!r}")
    if backend == "cpu" and _backends.core() is None:
        raise RuntimeError(f"backend='cpu' is not available: {_backends.backends()['cpu']}")
    return backend != "reference" and _backends.core() is not None


def _parse(transactions: object, use_core: bool) -> _tx.CSR:
    parser = _bridge.kernel("transactions_to_csr", torch.int64, _CPU) if use_core else None
    return _tx.as_csr(transactions, parser)


def _index_suffix(indices: np.ndarray) -> str:
    return "i32" if indices.dtype == np.int32 else "i64"


def frequent_itemsets(
    transactions: _tx.Transactions,
    min_support: Union[int, float],
    max_len: Optional[int] = None,
    *,
    max_itemsets: Optional[int] = None,
    backend: Optional[str] = None,
) -> list[tuple[Itemset, int]]:
    """Every itemset whose support reaches ``min_support``, with its support count.

    ``min_support``: an int is an absolute count (>= 1); a float is a fraction in (0, 1] of all
    transactions (frequent when ``count >= ceil(min_support * n)``, so 0.1 of 30 is 3).
    ``max_len``: longest itemset reported (None: no limit). ``max_itemsets``: raise ValueError
    as soon as more itemsets than this are frequent (None: no limit) — their number grows
    exponentially with the length of similar transactions, and a cap turns an out-of-memory
    crash into an answer. ``backend``: ``"cpu"`` (compiled core), ``"reference"`` (pure Python)
    or None (the core when built).

    Returns ``[(items, count), ...]`` with the items of each itemset in ascending id order and the
    list sorted by length, then lexicographically; as a set it equals pyfim's
    ``eclat(transactions, supp=-min_count, report='a')``. An empty database gives ``[]``.

    Memory (compiled core): about 8 bytes per (transaction, frequent item) occurrence for the
    horizontal and vertical copies, per thread the bitsets of one branch (at most longest
    transaction x extensions x support/8 bytes) and the result.
    """
    use_core = _use_core(backend)
    indptr, indices = _parse(transactions, use_core)
    n = indptr.size - 1
    count = _tx.min_count(min_support, n)
    limit = _tx.max_len(max_len)
    cap = _tx.positive_or_none(max_itemsets, "max_itemsets")
    if not use_core:
        from pyconcepts.reference import itemsets as reference

        return reference.frequent_itemsets(
            (indptr, indices), count, max_len, max_itemsets=max_itemsets
        )
    result: list[tuple[Itemset, int]] = _bridge.call(
        f"frequent_itemsets_{_index_suffix(indices)}",
        torch.from_numpy(indptr),
        torch.from_numpy(indices),
        n,
        count,
        limit,
        cap,
        dtype=torch.int64,
        device=_CPU,
    )
    return result


def itemset_support(
    transactions: _tx.Transactions,
    itemsets: Iterable[Iterable[int]],
    *,
    backend: Optional[str] = None,
) -> Any:
    """The support count (number of transactions containing all its items) of each query itemset.

    Items absent from the database give 0; the empty itemset gives the number of transactions.
    Returns an int64 numpy array, or an int64 tensor on the same device when ``transactions`` is a
    CSR pair of CUDA tensors (counted on the GPU: the database becomes bitsets there, taking
    distinct items x n/8 bytes of GPU memory).
    CPU memory: transactions are scanned in blocks of <= 65536, using about 8 KiB per distinct
    query item per thread, whatever the database size.
    """
    if (
        _tx.is_csr(transactions)
        and isinstance(transactions[0], torch.Tensor)  # type: ignore[index]
        and transactions[0].is_cuda  # type: ignore[index]
        and backend in (None, "cuda")
    ):
        return _support_cuda(transactions, itemsets)  # type: ignore[arg-type]
    if backend == "cuda":
        raise ValueError("backend='cuda' needs transactions as a CSR pair of CUDA tensors")
    use_core = _use_core(backend, allow_cuda=True)
    indptr, indices = _parse(transactions, use_core)
    q_offsets, q_items = _parse_queries(itemsets, use_core)
    if not use_core:
        from pyconcepts.reference import itemsets as reference

        return reference.itemset_support((indptr, indices), _tx.split(q_offsets, q_items))
    counts = torch.zeros(q_offsets.size - 1, dtype=torch.int64)
    _bridge.call(
        f"itemset_support_{_index_suffix(indices)}",
        torch.from_numpy(indptr),
        torch.from_numpy(indices),
        indptr.size - 1,
        torch.from_numpy(q_offsets),
        torch.from_numpy(q_items.astype(np.int64, copy=False)),
        q_offsets.size - 1,
        counts,
        dtype=torch.int64,
        device=_CPU,
    )
    return counts.numpy()


def _parse_queries(itemsets: object, use_core: bool) -> _tx.CSR:
    parser = _bridge.kernel("transactions_to_csr", torch.int64, _CPU) if use_core else None
    return _tx.as_queries(itemsets, parser)


def _support_cuda(
    transactions: tuple[torch.Tensor, torch.Tensor], itemsets: object
) -> torch.Tensor:
    if _backends.core_cuda() is None:
        raise RuntimeError(
            f"CUDA support counting is not available: {_backends.backends()['cuda']}"
        )
    indptr_t, indices_t = transactions
    device = indptr_t.device
    if indices_t.device != device:
        raise ValueError(
            f"transactions[1] (indices): expected device {device} (as indptr), "
            f"got {indices_t.device}"
        )
    for name, t in (
        ("transactions[0] (indptr)", indptr_t),
        ("transactions[1] (indices)", indices_t),
    ):
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(
                f"{name}: expected a 1-D integer tensor, got {t.dtype} {tuple(t.shape)}"
            )
    n = indptr_t.numel() - 1
    if n < 0:
        raise ValueError("transactions[0] (indptr): expected at least one entry (indptr[0] = 0)")
    indptr_t = _bridge.dense(indptr_t.to(torch.int64))
    q_offsets, q_items = _parse_queries(itemsets, _backends.core() is not None)
    n_queries = q_offsets.size - 1
    counts = torch.zeros(n_queries, dtype=torch.int64, device=device)
    if n_queries == 0 or n == 0:
        return counts
    # Dense item ids on the GPU; query items not in the database map to -1 (support 0).
    distinct, dense = torch.unique(indices_t.to(torch.int64), return_inverse=True)
    query = torch.from_numpy(q_items.astype(np.int64, copy=False)).to(device)
    query_dense = torch.full_like(query, -1, dtype=torch.int32)
    if distinct.numel():
        pos = torch.searchsorted(distinct, query).clamp(max=distinct.numel() - 1)
        query_dense = torch.where(distinct[pos] == query, pos, -1).to(torch.int32)
    words = (n + 63) // 64
    bits = torch.zeros(max(distinct.numel(), 1) * words, dtype=torch.int64, device=device)
    _bridge.call(
        "itemsets_fill_bitsets",
        indptr_t,
        _bridge.dense(dense.to(torch.int32)),
        n,
        words,
        bits,
        dtype=torch.int64,
        device=device,
    )
    _bridge.call(
        "itemsets_count_support",
        bits,
        n,
        words,
        torch.from_numpy(q_offsets).to(device),
        _bridge.dense(query_dense),
        n_queries,
        counts,
        dtype=torch.int64,
        device=device,
    )
    return counts
