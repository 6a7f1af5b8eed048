"""Transaction databases for the itemset ops: parsing, validation and the support threshold.

Shared by ``pyconcepts.ops.itemsets`` and its reference twin so both accept the same inputs and
raise the same errors. A database is either a sequence of iterables of integer item ids, or a CSR
pair ``(indptr, indices)`` of 1-D integer arrays (numpy or torch): transaction ``t`` holds
``indices[indptr[t]:indptr[t+1]]``. Item ids are any 64-bit integers (negative and huge ids are
renumbered internally); an item repeated inside a transaction counts once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

CSR = tuple[np.ndarray, np.ndarray]
Transactions = Union[Iterable[Iterable[int]], tuple[Any, Any]]
ListParser = Callable[[Sequence[Any], str], tuple[np.ndarray, np.ndarray]]

_MAX_TRANSACTIONS = 2**31 - 2


def is_csr(transactions: object) -> bool:
    """True for a CSR pair: a tuple of exactly two numpy arrays or torch tensors."""
    return (
        isinstance(transactions, tuple)
        and len(transactions) == 2
        and all(isinstance(a, (np.ndarray, torch.Tensor)) for a in transactions)
    )


def _int_array(name: str, a: object) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    return arr


def check_csr(indptr: object, indices: object, name: str = "transactions") -> CSR:
    """Validated CSR arrays on the CPU: indptr int64 and indices int32 or int64, contiguous."""
    ptr = _int_array(f"{name}[0] (indptr)", indptr)
    idx = _int_array(f"{name}[1] (indices)", indices)
    if ptr.size == 0:
        raise ValueError(f"{name}[0] (indptr): expected at least one entry (indptr[0] = 0)")
    if ptr.dtype == np.uint64 and ptr.size and ptr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}[0] (indptr): values exceed the int64 range")
    ptr = np.ascontiguousarray(ptr, dtype=np.int64)
    if ptr[0] != 0:
        raise ValueError(f"{name}[0] (indptr): expected indptr[0] == 0, got {ptr[0]}")
    if ptr.size > 1 and np.any(ptr[1:] < ptr[:-1]):
        raise ValueError(f"{name}[0] (indptr): expected non-decreasing values")
    if ptr[-1] != idx.size:
        raise ValueError(
            f"{name}: indptr[-1] must equal len(indices), got {ptr[-1]} and {idx.size}"
        )
    if ptr.size - 1 > _MAX_TRANSACTIONS:
        raise ValueError(f"{name}: at most {_MAX_TRANSACTIONS} transactions, got {ptr.size - 1}")
    if idx.dtype == np.uint64:
        if idx.size and idx.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name}[1] (indices): item ids must fit in a signed 64-bit integer")
        idx = idx.astype(np.int64)
    elif idx.dtype not in (np.int32, np.int64):
        idx = idx.astype(np.int64)
    return ptr, np.ascontiguousarray(idx)


def lists_to_csr(rows: Sequence[Any], name: str) -> CSR:
    """Pure-Python parsing of a sequence of iterables of integers (used when no core is built)."""
    indptr = [0]
    flat: list[int] = []
    for t, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
            raise TypeError(
                f"{name}[{t}]: expected an iterable of integers, got {type(row).__name__}"
            )
        for item in row:
            if isinstance(item, (str, bytes)) or not hasattr(item, "__index__"):
                raise TypeError(f"{name}[{t}]: expected integer items, got {type(item).__name__}")
            value = item.__index__()
            if not -(2**63) <= value < 2**63:
                raise ValueError(
                    f"{name}[{t}]: item {value} does not fit in a signed 64-bit integer"
                )
            flat.append(value)
        indptr.append(len(flat))
    return np.asarray(indptr, dtype=np.int64), np.asarray(flat, dtype=np.int64)


def as_csr(
    transactions: object, parse_lists: Optional[ListParser] = None, name: str = "transactions"
) -> CSR:
    """Any accepted database as validated CPU CSR arrays; ``parse_lists`` converts lists."""
    if isinstance(transactions, tuple) and is_csr(transactions):
        return check_csr(transactions[0], transactions[1], name)
    if isinstance(transactions, (str, bytes, np.ndarray, torch.Tensor)) or not isinstance(
        transactions, Iterable
    ):
        raise TypeError(
            f"{name}: expected a sequence of iterables of integers or a CSR pair "
            f"(indptr, indices) of arrays, got {type(transactions).__name__}"
        )
    rows = transactions if isinstance(transactions, (list, tuple)) else list(transactions)
    indptr, indices = (parse_lists or lists_to_csr)(rows, name)
    return check_csr(indptr, indices, name)


def as_queries(itemsets: object, parse_lists: Optional[ListParser] = None) -> CSR:
    """Query itemsets (a sequence of iterables of integers) as flat CSR arrays."""
    if is_csr(itemsets):
        raise TypeError("itemsets: expected a sequence of iterables of integers, got a CSR pair")
    return as_csr(itemsets, parse_lists, name="itemsets")


def min_count(min_support: object, n_transactions: int) -> int:
    """The absolute support threshold (>= 1).

    An int is a count (>= 1). A float is a fraction in (0, 1]: an itemset is frequent when
    ``count / n >= min_support``, i.e. ``count >= ceil(min_support * n)``, evaluated so that
    floating-point error never moves the threshold (0.1 of 30 transactions is 3, not 4).
    """
    if isinstance(min_support, (bool, np.bool_)):
        raise TypeError("min_support: expected an int count or a float fraction, got bool")
    if isinstance(min_support, numbers.Integral):
        count = int(min_support)
        if count < 1:
            raise ValueError(f"min_support: an int count must be >= 1, got {count}")
        return count
    if isinstance(min_support, numbers.Real):
        frac = float(min_support)
        if not (math.isfinite(frac) and 0.0 < frac <= 1.0):
            raise ValueError(f"min_support: a float fraction must be in (0, 1], got {frac}")
        count = math.ceil(frac * n_transactions)
        while count > 1 and (count - 1) / n_transactions >= frac:
            count -= 1
        while count < n_transactions and count / n_transactions < frac:
            count += 1
        return max(count, 1)
    raise TypeError(
        f"min_support: expected an int count or a float fraction, got {type(min_support).__name__}"
    )


def max_len(value: object) -> int:
    """The longest itemset to report, 0 meaning no limit (None)."""
    return positive_or_none(value, "max_len")


def positive_or_none(value: object, name: str) -> int:
    """A limit given as None (no limit, returned as 0) or an int >= 1."""
    if value is None:
        return 0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected None or an int >= 1, got {type(value).__name__}")
    if int(value) < 1:
        raise ValueError(f"{name}: expected None or an int >= 1, got {int(value)}")
    return int(value)


def split(offsets: np.ndarray, items: np.ndarray) -> list[tuple[int, ...]]:
    """Flat itemset arrays -> ``[items_tuple, ...]``."""
    flat, off = items.tolist(), offsets.tolist()
    return [tuple(flat[off[k] : off[k + 1]]) for k in range(len(off) - 1)]
