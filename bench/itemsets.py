"""Frequent itemset mining: pyconcepts vs pyfim (eclat, fpgrowth) and mlxtend (fpgrowth, apriori).

Databases are shaped like the pattern-mining explainer's: every transaction holds the top-10
of 512 filters of a patch (drawn from class-specific Zipf preferences, i.e. Gumbel top-k) plus
one class item of 10. For each size and min support the script mines with every tool, checks that
all return the same itemsets with the same counts, then times each (median of repeats) in this one
process. pyfim and mlxtend take Python lists / a one-hot DataFrame; pyconcepts is timed both from
Python lists (conversion included) and from CSR arrays, and the conversion of the lists alone
(``pyconcepts: list parsing only``: lists = parsing + the CSR path's mining). ``--memory`` mines
10M transactions (the 1M database tiled 10 times) in a subprocess and reports its peak resident
memory.

    python -m bench.itemsets [--sizes 10000,100000,1000000] [--supports 0.01,0.001]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench._timing import median_seconds
from pyconcepts.ops import _bridge, frequent_itemsets
from pyconcepts.opspec import transactions as _tx
from pyconcepts.persistence import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent / "results"
N_FILTERS, TOP, N_CLASSES = 512, 10, 10
SLOW = 5.0  # seconds: a tool this slow is not repeated
PARSE = "pyconcepts: list parsing only"
_CPU = torch.device("cpu")


def make_database(n: int, seed: int = 0, chunk: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr int64, indices int32) of n transactions: top-10 of 512 filters + class item.

    Each class prefers filters by a Zipf law over its own permutation, mixed half-and-half with a
    shared one (classes share filters); a patch's top filters are the Gumbel top-k of those
    log-weights, as noisy activations would rank them. The class item is ``512 + class``.
    """
    cached = RESULTS / f"itemsets_db_{n}_{seed}.npz"
    if cached.is_file():
        with np.load(cached) as f:
            return f["indptr"], f["indices"]
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, N_FILTERS + 1) ** 1.1
    shared = np.argsort(rng.permutation(N_FILTERS))
    logw = np.stack(
        [
            np.log(0.5 * zipf[shared] + 0.5 * zipf[np.argsort(rng.permutation(N_FILTERS))])
            for _ in range(N_CLASSES)
        ]
    ).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, n)
    rows = np.empty((n, TOP + 1), np.int32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        u = rng.random((stop - start, N_FILTERS), dtype=np.float32)
        noisy = logw[labels[start:stop]] - np.log(-np.log(np.maximum(u, 1e-30)))
        rows[start:stop, :TOP] = np.argpartition(-noisy, TOP, axis=1)[:, :TOP]
    rows[:, TOP] = N_FILTERS + labels
    indptr = np.arange(0, n * (TOP + 1) + 1, TOP + 1, dtype=np.int64)
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez(cached, indptr=indptr, indices=rows.ravel())
    return indptr, rows.ravel()


def _as_dict(pairs: Any) -> dict[frozenset[int], int]:
    return {frozenset(int(i) for i in items): int(count) for items, count in pairs}


def _tools(
    indptr: np.ndarray,
    indices: np.ndarray,
    lists: list[list[int]],
    min_count: int,
    with_mlxtend: bool,
    with_apriori: bool,
) -> dict[str, Callable[[], dict[frozenset[int], int]]]:
    import fim

    n = indptr.size - 1
    tools: dict[str, Callable[[], dict[frozenset[int], int]]] = {
        "pyconcepts (CSR)": lambda: _as_dict(frequent_itemsets((indptr, indices), min_count)),
        "pyconcepts (lists)": lambda: _as_dict(frequent_itemsets(lists, min_count)),
        "pyfim eclat": lambda: _as_dict(fim.eclat(lists, supp=-min_count, report="a")),
        "pyfim fpgrowth": lambda: _as_dict(fim.fpgrowth(lists, supp=-min_count, report="a")),
    }
    if with_mlxtend:
        import pandas as pd
        from mlxtend.frequent_patterns import apriori, fpgrowth
        from mlxtend.preprocessing import TransactionEncoder

        def one_hot() -> Any:
            encoder = TransactionEncoder()
            return pd.DataFrame(encoder.fit(lists).transform(lists), columns=encoder.columns_)

        def mlx(algorithm: Callable[..., Any]) -> dict[frozenset[int], int]:
            frame = algorithm(one_hot(), min_support=min_count / n, use_colnames=True)
            counts = (frame["support"].to_numpy() * n).round().astype(int)
            return _as_dict(zip(frame["itemsets"], counts.tolist()))

        tools["mlxtend fpgrowth (+one-hot)"] = lambda: mlx(fpgrowth)
        if with_apriori:
            tools["mlxtend apriori (+one-hot)"] = lambda: mlx(apriori)
    return tools


def run(
    sizes: list[int], supports: list[float], repeats: int, mlxtend_max: int, apriori_max: int
) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        indptr, indices = make_database(n)
        lists = indices.reshape(n, TOP + 1).tolist()
        for support in supports:
            min_count = math.ceil(support * n)
            tools = _tools(indptr, indices, lists, min_count, n <= mlxtend_max, n <= apriori_max)
            reference = None
            for name, mine in tools.items():
                start = time.perf_counter()
                result = mine()  # also the warm-up
                times = [time.perf_counter() - start]
                if reference is None:
                    reference = result
                agree = result == reference
                if times[0] < SLOW:  # slow tools are timed by their single run
                    times = []
                for _ in range(repeats if not times else 0):
                    start = time.perf_counter()
                    mine()
                    times.append(time.perf_counter() - start)
                rows.append(
                    {
                        "transactions": n,
                        "min_support": support,
                        "min_count": min_count,
                        "tool": name,
                        "itemsets": len(result),
                        "agrees": agree,
                        "seconds": statistics.median(times),
                    }
                )
                print(
                    f"  {n:>8} {support:<6} {name:<28} {len(result):>7} itemsets "
                    f"{statistics.median(times):8.3f} s  agrees={agree}",
                    file=sys.stderr,
                )
            rows.append(
                {
                    "transactions": n, "min_support": support, "min_count": min_count,
                    "tool": PARSE, "itemsets": 0, "agrees": None,
                    "seconds": median_seconds(partial(parse_lists, lists), repeats),
                }
            )  # fmt: skip
    return rows


def parse_lists(lists: list[list[int]]) -> Any:
    """The list path's first step alone: Python lists → validated CSR arrays (compiled parser);
    the rest of ``pyconcepts (lists)`` is the CSR path's mining."""
    return _tx.as_csr(lists, _bridge.kernel("transactions_to_csr", torch.int64, _CPU))


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| transactions | min support | tool | itemsets | agrees | time (s) | vs ours (CSR) |",
        "|---:|---:|---|---:|:---:|---:|---:|",
    ]
    base = {
        (r["transactions"], r["min_support"]): r["seconds"]
        for r in rows
        if r["tool"] == "pyconcepts (CSR)"
    }
    for r in rows:
        ratio = r["seconds"] / base[(r["transactions"], r["min_support"])]
        lines.append(
            f"| {r['transactions']:,} | {r['min_support']:.1%} | {r['tool']} | {r['itemsets']:,} | "
            f"{_agrees(r['agrees'])} | {r['seconds']:.3f} | {ratio:.1f}x |"
        )
    return "\n".join(lines)


def _agrees(value: Any) -> str:
    return "–" if value is None else "yes" if value else "NO"


def _memory_child(n_copies: int, support: float) -> None:
    indptr, indices = make_database(1_000_000)
    n = n_copies * (indptr.size - 1)
    big_indices = np.tile(indices, n_copies)
    big_indptr = np.arange(0, big_indices.size + 1, TOP + 1, dtype=np.int64)
    before = _peak_rss_mib()
    start = time.perf_counter()
    result = frequent_itemsets((big_indptr, big_indices), support)
    seconds = time.perf_counter() - start
    report = {
        "transactions": n,
        "min_support": support,
        "itemsets": len(result),
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_before_mining_mib": before,
    }
    print(json.dumps(report))


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not inherit the
    parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(support: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.itemsets", "--memory-child", str(support)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--supports", default="0.01,0.001")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--mlxtend-max",
        type=int,
        default=1_000_000,
        help="largest database given to mlxtend (it needs a dense one-hot frame)",
    )
    parser.add_argument(
        "--apriori-max",
        type=int,
        default=10_000,
        help="largest database given to mlxtend's apriori (minutes beyond)",
    )
    parser.add_argument("--memory", action="store_true", help="also mine 10M transactions")
    parser.add_argument("--memory-child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        _memory_child(10, args.memory_child)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    supports = [float(s) for s in args.supports.split(",")]
    rows = run(sizes, supports, args.repeats, args.mlxtend_max, args.apriori_max)
    report: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "rows": rows}
    print(markdown(rows))
    if args.memory:
        report["memory"] = memory(0.001)
        print("\n10M transactions:", report["memory"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(RESULTS / "itemsets.json", json.dumps(report, indent=2).encode())


if __name__ == "__main__":
    main()
