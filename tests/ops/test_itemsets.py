"""Itemset kernels vs pyfim (the oracle) and vs the plain-Python reference twin."""

from __future__ import annotations

import math

import fim
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconcepts import _backends
from pyconcepts.ops import association_rules, frequent_itemsets, itemset_support
from pyconcepts.reference import itemsets as ref

needs_core = pytest.mark.skipif(_backends.core() is None, reason="compiled core not built")
IDS = [-(2**63), -7, -1, 0, 1, 2, 3, 5, 8, 13, 2**40, 2**63 - 1]

databases = st.lists(st.lists(st.sampled_from(IDS), max_size=8), max_size=30)
small_id_databases = st.lists(st.lists(st.integers(0, 9), max_size=7), max_size=40)


def as_dict(result):
    return {frozenset(items): count for items, count in result}


def pyfim_itemsets(transactions, min_count, max_len=None):
    if not transactions:
        return {}
    # pyfim drops items present in every transaction (perfect extensions of the empty set, which
    # it never reports); one extra empty transaction avoids that and changes no count.
    rows = [sorted(set(t)) for t in transactions] + [[]]
    limits = {} if max_len is None else {"zmax": max_len}
    found = fim.eclat(rows, supp=-min_count, report="a", **limits)
    return {frozenset(items): count for items, count in found}


def to_csr(transactions, dtype=np.int64):
    indptr = np.cumsum([0] + [len(t) for t in transactions]).astype(np.int64)
    indices = np.asarray([i for t in transactions for i in t], dtype=dtype)
    return indptr, indices


def correlated_database(n, n_items=40, length=8, seed=0):
    """Transactions with a few planted co-occurring groups, so that itemsets go deep."""
    rng = np.random.default_rng(seed)
    groups = [rng.choice(n_items, 5, replace=False) for _ in range(4)]
    rows = []
    for _ in range(n):
        row = set(rng.choice(n_items, rng.integers(0, length), replace=False).tolist())
        if rng.random() < 0.6:
            group = groups[rng.integers(len(groups))]
            row |= set(group[rng.random(len(group)) < 0.8].tolist())
        rows.append(sorted(row))
    return rows


@needs_core
@settings(max_examples=80, deadline=None)
@given(databases, st.integers(1, 4), st.one_of(st.none(), st.integers(1, 3)))
def test_matches_pyfim_and_reference(transactions, min_count, max_len):
    ours = frequent_itemsets(transactions, min_count, max_len)
    assert as_dict(ours) == pyfim_itemsets(transactions, min_count, max_len)
    assert ours == ref.frequent_itemsets(transactions, min_count, max_len)


@needs_core
@settings(max_examples=40, deadline=None)
@given(small_id_databases, st.floats(0.01, 1.0))
def test_fraction_threshold_and_csr_input(transactions, fraction):
    n = len(transactions)
    expected = ref.frequent_itemsets(transactions, fraction)
    for dtype in (np.int32, np.int64, np.uint16):
        assert frequent_itemsets(to_csr(transactions, dtype), fraction) == expected
    if n:
        count = math.ceil(fraction * n - 1e-9 * n)
        assert as_dict(expected) == pyfim_itemsets(transactions, max(count, 1))


@needs_core
@settings(max_examples=40, deadline=None)
@given(small_id_databases, st.integers(1, 3))
def test_rows_of_any_iterable_type_parse_alike(transactions, min_count):
    """Lists and tuples (sized up front by the parser) mixed with sets, numpy rows and
    generators (read as they come) give the result of the same database as lists."""
    kinds = [list, tuple, set, np.array, lambda r: (int(i) for i in r)]
    mixed = [kinds[i % len(kinds)](row) for i, row in enumerate(transactions)]
    want = as_dict(frequent_itemsets([list(t) for t in transactions], min_count))
    assert as_dict(frequent_itemsets(mixed, min_count)) == want


@needs_core
def test_result_order_items_sorted_then_by_length_and_lexicographic():
    result = frequent_itemsets(correlated_database(300), 20)
    assert all(list(items) == sorted(items) for items, _ in result)
    keys = [(len(items), items) for items, _ in result]
    assert keys == sorted(keys)


@needs_core
@pytest.mark.parametrize("min_count", [3, 15, 60])
def test_larger_database_matches_pyfim(min_count):
    # 3000 transactions: projections span many 64-bit words, sparse nodes get compacted, and
    # both threads take branches.
    transactions = correlated_database(3000)
    ours = frequent_itemsets(transactions, min_count)
    assert max(len(items) for items, _ in ours) >= 4
    assert as_dict(ours) == pyfim_itemsets(transactions, min_count)
    indptr, indices = to_csr(transactions, np.int32)
    assert (
        frequent_itemsets((torch.from_numpy(indptr), torch.from_numpy(indices)), min_count) == ours
    )


@needs_core
def test_spread_out_ids_and_duplicates():
    base = correlated_database(500, n_items=15)
    spread = [[i * 10**15 - 7 for i in t] for t in base]
    duplicated = [t + t[:2] for t in spread]
    ours = frequent_itemsets(duplicated, 25)
    mapped = {frozenset((i + 7) // 10**15 for i in s): c for s, c in as_dict(ours).items()}
    assert mapped == pyfim_itemsets(base, 25)


@needs_core
def test_fraction_uses_exact_threshold():
    transactions = [[1]] * 3 + [[2]] * 27
    assert as_dict(frequent_itemsets(transactions, 0.1)) == {frozenset([1]): 3, frozenset([2]): 27}
    assert as_dict(frequent_itemsets(transactions, 0.11)) == {frozenset([2]): 27}


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_empty_inputs(backend):
    if backend == "cpu" and _backends.core() is None:
        pytest.skip("compiled core not built")
    assert frequent_itemsets([], 0.5, backend=backend) == []
    assert frequent_itemsets([[], []], 1, backend=backend) == []
    assert frequent_itemsets([[4]], 2, backend=backend) == []
    assert frequent_itemsets([[4]], 1, backend=backend) == [((4,), 1)]
    empty_csr = (np.zeros(1, np.int64), np.zeros(0, np.int64))
    assert frequent_itemsets(empty_csr, 1, backend=backend) == []
    assert itemset_support([], [[1], []], backend=backend).tolist() == [0, 0]
    assert itemset_support([[1]], [], backend=backend).tolist() == []


@needs_core
@settings(max_examples=60, deadline=None)
@given(databases, st.lists(st.lists(st.sampled_from([*IDS, 99]), max_size=4), max_size=10))
def test_support_matches_reference_and_brute_force(transactions, queries):
    ours = itemset_support(transactions, queries)
    assert ours.dtype == np.int64
    assert ours.tolist() == ref.itemset_support(transactions, queries).tolist()
    brute = [sum(set(q) <= set(t) for t in transactions) for q in queries]
    assert ours.tolist() == brute


@needs_core
def test_support_across_transaction_blocks():
    rng = np.random.default_rng(1)
    n = 70_000  # more than one 4096..65536-transaction block
    indices = rng.integers(0, 30, size=(n, 4)).astype(np.int32)
    indptr = np.arange(0, 4 * n + 1, 4, dtype=np.int64)
    queries = [[0], [1, 2], [3, 4, 5], [], [31], [7, 7]]
    sets = [set(row) for row in indices.tolist()]
    expected = [sum(set(q) <= s for s in sets) for q in queries]
    assert itemset_support((indptr, indices.ravel()), queries).tolist() == expected
    mined = frequent_itemsets((indptr, indices.ravel()), 500)
    assert itemset_support((indptr, indices.ravel()), [s for s, _ in mined]).tolist() == [
        c for _, c in mined
    ]


@needs_core
def test_rules_match_pyfim():
    transactions = correlated_database(400, n_items=12)
    itemsets = frequent_itemsets(transactions, 30)
    ours = {
        (r.antecedent, r.consequent[0]): (r.count, r.confidence, r.lift)
        for r in association_rules(itemsets, 0.0, len(transactions))
        if len(r.consequent) == 1
    }
    rows = [sorted(set(t)) for t in transactions]
    theirs = {
        (tuple(sorted(body)), head): (count, conf, lift)
        for head, body, count, conf, lift in fim.arules(
            rows, supp=-30, conf=0, report="acl", zmin=2, mode="o"
        )
        if len(body) >= 1
    }
    assert ours.keys() == theirs.keys()
    for key, (count, conf, lift) in ours.items():
        assert count == theirs[key][0]
        assert conf == pytest.approx(theirs[key][1]) and lift == pytest.approx(theirs[key][2])


def test_rules_constrained_to_class_consequents():
    # Items 100 and 101 are class items: rules must be filters -> one class.
    transactions = [[1, 2, 100]] * 6 + [[1, 3, 101]] * 4 + [[2, 3, 100]] * 2
    itemsets = ref.frequent_itemsets(transactions, 2)
    rules = association_rules(itemsets, 0.5, len(transactions), consequents=[100, 101])
    assert rules
    for r in rules:
        assert len(r.consequent) == 1 and r.consequent[0] in (100, 101)
        assert not set(r.antecedent) & {100, 101}
    top = rules[0]
    assert (top.antecedent, top.consequent, top.count) == ((2,), (100,), 8)
    assert top.confidence == 1.0 and top.lift == pytest.approx(12 / 8)
    scores = [r.score for r in rules]
    assert scores == sorted(scores, reverse=True)
    assert all(r.lift >= 1.4 for r in association_rules(itemsets, 0.0, 12, min_lift=1.4))


def test_rules_need_downward_closed_itemsets():
    with pytest.raises(ValueError, match="subset"):
        association_rules([((1, 2), 3), ((1,), 4)], 0.5, 10)
    with pytest.raises(ValueError, match="min_confidence"):
        association_rules([], 1.5, 10)
    with pytest.raises(ValueError, match="n_transactions"):
        association_rules([], 0.5, 0)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize(
    ("transactions", "min_support", "error", "match"),
    [
        ([[1]], 0, ValueError, "min_support"),
        ([[1]], -2, ValueError, "min_support"),
        ([[1]], 1.5, ValueError, "min_support"),
        ([[1]], 0.0, ValueError, "min_support"),
        ([[1]], float("nan"), ValueError, "min_support"),
        ([[1]], True, TypeError, "min_support"),
        ([[1]], "2", TypeError, "min_support"),
        (5, 1, TypeError, "transactions"),
        ("abc", 1, TypeError, "transactions"),
        ([[1, "a"]], 1, TypeError, r"transactions\[0\]"),
        ([[1], [1.5]], 1, TypeError, r"transactions\[1\]"),
        ([[1], 7], 1, TypeError, r"transactions\[1\]"),
        ([[2**64]], 1, ValueError, "64-bit"),
        ((np.array([1, 2]), np.array([1, 2])), 1, ValueError, "indptr"),
        ((np.array([0, 2, 1]), np.array([1, 2])), 1, ValueError, "non-decreasing"),
        ((np.array([0, 3]), np.array([1, 2])), 1, ValueError, "len"),
        ((np.array([0, 2]), np.array([1.0, 2.0])), 1, TypeError, "integer"),
        ((np.zeros((1, 1), np.int64), np.array([1])), 1, ValueError, "1-D"),
    ],
)
def test_bad_inputs(backend, transactions, min_support, error, match):
    if backend == "cpu" and _backends.core() is None:
        pytest.skip("compiled core not built")
    with pytest.raises(error, match=match):
        frequent_itemsets(transactions, min_support, backend=backend)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@settings(max_examples=30, deadline=None)
@given(small_id_databases, st.integers(1, 3), st.one_of(st.none(), st.integers(1, 4)))
def test_max_itemsets_caps_the_result_exactly(backend, transactions, min_count, max_len):
    if backend == "cpu" and _backends.core() is None:
        pytest.skip("compiled core not built")
    full = frequent_itemsets(transactions, min_count, max_len, backend=backend)
    limit = max(1, len(full))
    capped = frequent_itemsets(
        transactions, min_count, max_len, max_itemsets=limit, backend=backend
    )
    assert capped == full  # reaching the cap exactly is allowed
    if len(full) >= 2:
        with pytest.raises(ValueError, match="max_itemsets"):
            frequent_itemsets(
                transactions, min_count, max_len, max_itemsets=len(full) - 1, backend=backend
            )


@needs_core
def test_max_itemsets_stops_an_exponential_result():
    # 30 identical transactions of 40 items: 2^40 - 1 frequent itemsets, which no memory holds
    rows = [list(range(40))] * 30
    with pytest.raises(ValueError, match="max_itemsets"):
        frequent_itemsets(rows, 1, max_itemsets=100_000)


def test_bad_options():
    with pytest.raises(ValueError, match="max_itemsets"):
        frequent_itemsets([[1]], 1, max_itemsets=0)
    with pytest.raises(ValueError, match="max_len"):
        frequent_itemsets([[1]], 1, max_len=0)
    with pytest.raises(TypeError, match="max_len"):
        frequent_itemsets([[1]], 1, max_len=2.0)
    with pytest.raises(ValueError, match="backend"):
        frequent_itemsets([[1]], 1, backend="gpu")
    with pytest.raises(TypeError, match="itemsets"):
        itemset_support([[1]], (np.array([0, 1]), np.array([1])))
    with pytest.raises(TypeError, match=r"itemsets\[0\]"):
        itemset_support([[1]], [3])
    with pytest.raises(ValueError, match="cuda"):
        itemset_support([[1]], [[1]], backend="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not _backends.cuda_usable(), reason="needs a CUDA GPU and _core_cuda")
@pytest.mark.parametrize("n", [1, 63, 64, 65, 5000, 200_000])
def test_cuda_support_matches_cpu(n):
    rng = np.random.default_rng(n)
    lengths = rng.integers(0, 9, size=n)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = rng.integers(-5, 40, size=int(indptr[-1]))
    queries = [[], [0], [1, 2], [3, 4, 5], [1000], [-5, 0], *[[int(i)] for i in range(-5, 40, 7)]]
    expected = itemset_support((indptr, indices), queries)
    device = torch.device("cuda")
    got = itemset_support(
        (torch.from_numpy(indptr).to(device), torch.from_numpy(indices).to(device)), queries
    )
    assert got.device.type == "cuda"
    assert got.cpu().tolist() == expected.tolist()


@needs_core
def test_the_compiled_miner_refuses_a_decreasing_indptr_itself():
    """The Python layer refuses it first; the kernels check it too, so a raw call cannot read
    outside ``indices`` (docs/reliability.md)."""
    from pyconcepts.ops import _bridge

    indptr, indices = torch.tensor([0, 2, 1, 3]), torch.tensor([1, 2, 3], dtype=torch.int64)
    with pytest.raises(ValueError, match="non-decreasing"):
        _bridge.call("frequent_itemsets_i64", indptr, indices, 3, 1, 0, 0,
                     dtype=torch.int64, device=torch.device("cpu"))  # fmt: skip
