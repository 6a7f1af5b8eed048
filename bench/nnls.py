"""Benchmark of ``pyconcepts.ops.nnls`` and ``greedy_nnls_basis`` against the scipy loop (the
obvious implementation) and the pure-torch reference twin, in one process on the same inputs.

``python -m bench.nnls [--quick]``: checks agreement first, then times (median of repeats),
prints markdown tables with ratios and writes ``bench/results/nnls.json``. The scipy loop and
the reference are timed on a subset of the targets for the greedy basis and scaled linearly
(their cost per target is constant); the subset's selections are checked for identity.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import nnls as scipy_nnls

from pyconcepts.ops import greedy_nnls_basis, nnls
from pyconcepts.persistence import atomic_write_bytes
from pyconcepts.reference import nnls as reference

RESULTS = Path(__file__).resolve().parent / "results" / "nnls.json"


CPU: dict[str, float] = {}  # best process CPU time of the last timed() call, by label


def timed(fn: Callable[[], Any], repeats: int, label: str = "") -> tuple[float, float, Any]:
    """(best, median, last result) of ``repeats`` wall-clock runs: on a shared machine the best
    run is the least noisy estimate. The best process CPU time (all threads) is stored in
    ``CPU[label]``: it measures the work independently of other processes' load."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU[label] = min(cpu)
    return min(times), statistics.median(times), out


def scipy_batch(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([scipy_nnls(A[i], b[i])[0] for i in range(A.shape[0])])


def scipy_greedy(targets: np.ndarray, cands: np.ndarray, T: int) -> np.ndarray:
    idx = np.zeros((targets.shape[0], T), np.int64)
    for k in range(targets.shape[0]):
        chosen: list[int] = []
        for _ in range(T):
            best_r, best_j = np.inf, -1
            for j in range(cands.shape[0]):
                if j not in chosen:
                    r = scipy_nnls(cands[[*chosen, j]].T, targets[k])[1]
                    if r < best_r:
                        best_r, best_j = r, j
            chosen.append(best_j)
        idx[k] = chosen
    return idx


def random_problems(batch: int, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded float64 NNLS problems: A [batch, m, n], b [batch, m], standard normal."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(batch, m, n, generator=g, dtype=torch.float64)
    return A, torch.randn(batch, m, generator=g, dtype=torch.float64)


def bench_nnls(batch: int, m: int, n: int, repeats: int) -> dict[str, Any]:
    A, b = random_problems(batch, m, n)
    An, bn = A.numpy(), b.numpy()
    t_ours, ours_median, x = timed(lambda: nnls(A, b), repeats, "ours")
    t_scipy, scipy_median, xs = timed(lambda: scipy_batch(An, bn), 5, "scipy")
    n_ref = min(batch, 20)
    t_ref, _, xr = timed(lambda: reference.nnls(A[:n_ref], b[:n_ref]), 1)
    scale = 1 + np.abs(xs).max()
    return {
        "shape": f"{batch} x ({m}x{n})",
        "ours_s": t_ours,
        "ours_median_s": ours_median,
        "ours_cpu_s": CPU["ours"],
        "scipy_loop_s": t_scipy,
        "scipy_loop_cpu_s": CPU["scipy"],
        "scipy_loop_median_s": scipy_median,
        "reference_s": t_ref * batch / n_ref,
        "reference_problems_timed": n_ref,
        "max_abs_diff_vs_scipy": float(np.abs(x.numpy() - xs).max() / scale),
        "max_abs_diff_ref_vs_scipy": float(np.abs(xr.numpy() - xs[:n_ref]).max() / scale),
    }


def bench_greedy(
    K: int, N: int, D: int, T: int, repeats: int, k_scipy: int, k_ref: int
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    cands = torch.randn(N, D, generator=g, dtype=torch.float64)
    cands = cands / cands.norm(dim=1, keepdim=True)
    targets = torch.randn(K, D, generator=g, dtype=torch.float64)
    t_ours, median, fit = timed(lambda: greedy_nnls_basis(targets, cands, T), repeats, "ours")
    row: dict[str, Any] = {
        "K": K,
        "N": N,
        "D": D,
        "T": T,
        "ours_s": t_ours,
        "ours_median_s": median,
        "ours_cpu_s": CPU["ours"],
    }
    if k_scipy:
        t, _, idx = timed(
            lambda: scipy_greedy(targets[:k_scipy].numpy(), cands.numpy(), T), 1, "scipy"
        )
        row["scipy_loop_s"] = t * K / k_scipy
        row["scipy_loop_cpu_s"] = CPU["scipy"] * K / k_scipy
        row["scipy_targets_timed"] = k_scipy
        row["same_selection_as_scipy"] = bool((fit.indices[:k_scipy].numpy() == idx).all())
    if k_ref:
        t, _, ref = timed(lambda: reference.greedy_nnls_basis(targets[:k_ref], cands, T), 1)
        row["reference_s"] = t * K / k_ref
        row["reference_targets_timed"] = k_ref
        row["same_selection_as_reference"] = bool(torch.equal(fit.indices[:k_ref], ref.indices))
    return row


def ratio(row: dict[str, Any], key: str) -> str:
    return f"{row[key] / row['ours_s']:.0f}x" if key in row else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args()
    q = args.quick
    threads = torch.get_num_threads()
    out: dict[str, Any] = {"threads": threads, "nnls": [], "greedy": [], "scaling": []}

    for batch, m, n in [(2000, 64, 16), (2000, 2048, 7)]:
        out["nnls"].append(bench_nnls(200 if q else batch, m, n, repeats=5 if q else 21))
    print(f"\n### nnls (float64, {threads} threads)\n")
    print(
        "| batch | ours | scipy loop | reference* | vs scipy | vs reference | ours CPU | "
        "scipy CPU | CPU ratio | max diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in out["nnls"]:
        print(
            f"| {r['shape']} | {r['ours_s'] * 1e3:.1f} ms | {r['scipy_loop_s'] * 1e3:.0f} ms | "
            f"{r['reference_s'] * 1e3:.0f} ms | {ratio(r, 'scipy_loop_s')} | "
            f"{ratio(r, 'reference_s')} | {r['ours_cpu_s'] * 1e3:.1f} ms | "
            f"{r['scipy_loop_cpu_s'] * 1e3:.0f} ms | "
            f"{r['scipy_loop_cpu_s'] / r['ours_cpu_s']:.0f}x | {r['max_abs_diff_vs_scipy']:.1e} |"
        )
    print("\n*reference timed on the first 20 problems, scaled to the batch.")

    K = 50 if q else 1000
    for D in [512, 2048]:
        out["greedy"].append(
            bench_greedy(K, 660, D, 7, 1 if q else 5, 1 if q else 3, 2 if q else 8)
        )
    print(f"\n### greedy_nnls_basis (float64, T=7, N=660, {threads} threads)\n")
    print(
        "| K x D | ours | scipy loop* | reference* | vs scipy | vs reference | ours CPU | "
        "scipy CPU* | CPU ratio | same selection |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in out["greedy"]:
        print(
            f"| {r['K']} x {r['D']} | {r['ours_s']:.2f} s | {r['scipy_loop_s']:.0f} s | "
            f"{r['reference_s']:.0f} s | {ratio(r, 'scipy_loop_s')} | {ratio(r, 'reference_s')} | "
            f"{r['ours_cpu_s']:.2f} s | {r['scipy_loop_cpu_s']:.0f} s | "
            f"{r['scipy_loop_cpu_s'] / r['ours_cpu_s']:.0f}x | "
            f"{r['same_selection_as_scipy'] and r['same_selection_as_reference']} |"
        )
    print(
        f"\n*scipy loop timed on {out['greedy'][0]['scipy_targets_timed']} targets and the "
        f"reference on {out['greedy'][0]['reference_targets_timed']}, scaled to K.\n"
    )

    base = {"K": K, "N": 660, "D": 512, "T": 7}
    grid = [("K", [K // 4, K // 2, K]), ("N", [165, 330, 660]), ("T", [3, 7, 14])]
    for name, values in grid:
        for v in values:
            p = {**base, name: v}
            row = bench_greedy(p["K"], p["N"], p["D"], p["T"], 1 if q else 3, 0, 0)
            out["scaling"].append({"vary": name, **row})
    print(f"### greedy_nnls_basis scaling (D=512; base K={K}, N=660, T=7)\n")
    print("| vary | K | N | T | ours (wall) | ours (CPU) |")
    print("|---|---|---|---|---|---|")
    for r in out["scaling"]:
        print(
            f"| {r['vary']} | {r['K']} | {r['N']} | {r['T']} | {r['ours_s']:.3f} s | "
            f"{r['ours_cpu_s']:.3f} s |"
        )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(RESULTS, json.dumps(out, indent=2).encode())
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
