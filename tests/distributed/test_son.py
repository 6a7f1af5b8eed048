"""SON mining over shards equals single-machine mining exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconcepts.distributed import son_frequent_itemsets
from pyconcepts.ops import frequent_itemsets

pytest.importorskip("ray", reason="Ray is not installed (the [distributed] extra)")

transactions = st.lists(st.lists(st.integers(-3, 9), max_size=6), max_size=40)


@settings(max_examples=40)
@given(
    rows=transactions,
    cuts=st.lists(st.integers(0, 40), max_size=4),
    support=st.one_of(st.integers(1, 6), st.floats(0.05, 1.0)),
    max_len=st.one_of(st.none(), st.integers(1, 4)),
)
def test_son_equals_single_machine_mining(
    ray_cluster: Any, rows: list[list[int]], cuts: list[int], support: Any, max_len: Any
) -> None:
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    shards = [rows[a:b] for a, b in zip(bounds, bounds[1:])]
    assert son_frequent_itemsets(shards, support, max_len) == frequent_itemsets(
        rows, support, max_len
    )


def test_csr_shards_and_object_refs(ray_cluster: Any) -> None:
    rng = np.random.default_rng(0)
    rows = [sorted(set(rng.integers(0, 30, size=8).tolist())) for _ in range(3000)]
    expected = frequent_itemsets(rows, 0.05)
    shards: list[Any] = []
    for part in (rows[:1000], rows[1000:2200], rows[2200:]):
        indptr = np.cumsum([0] + [len(r) for r in part])
        shards.append((indptr, np.concatenate([np.asarray(r) for r in part])))
    shards[1] = ray_cluster.put(shards[1])
    assert son_frequent_itemsets(shards, 0.05) == expected
    assert len(expected) > 30


def test_argument_errors(ray_cluster: Any) -> None:
    with pytest.raises(TypeError, match="shards"):
        son_frequent_itemsets("abc", 2)
    with pytest.raises(ValueError, match="max_len"):
        son_frequent_itemsets([[[1]]], 1, max_len=0)
    with pytest.raises(ValueError, match="min_support"):
        son_frequent_itemsets([[[1]], [[1, 2]]], 0)
    assert son_frequent_itemsets([[], []], 1) == []
