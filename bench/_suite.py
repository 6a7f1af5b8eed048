"""The kernels of ``python -m bench --all``: for each, ours and the tools on the same inputs at
a range of problem sizes. Each size's outputs are checked to agree before anything is timed.

A kernel's ``setup(size)`` returns ``{implementation: zero-argument call}`` (ours first) and
``agree(implementation, ours_output, its_output)``: True / False, or None where the tool
computes a different quantity by design (then only its time is compared). Tools that are not
installed, or whose estimated memory exceeds the guard, are left out with the reason recorded.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

MEMORY_GUARD_GIB = 2.0  # the benchmark machine is shared: skip calls estimated above this
SLOW_S = 1.0  # a first call slower than this is the only one timed
OURS = "pyconcepts"

Calls = dict[str, Callable[[], Any]]


@dataclass(frozen=True)
class Kernel:
    name: str
    title: str  # what is timed, for the page
    size_name: str  # what the size counts
    sizes: dict[str, list[int]]  # "quick" / "full"
    setup: Callable[[int], tuple[Calls, dict[str, str]]]  # size -> (calls, skipped: reason)
    agree: Callable[[str, Any, Any], Optional[bool]]


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _close(atol: float) -> Callable[[str, Any, Any], Optional[bool]]:
    def agree(impl: str, ours: Any, theirs: Any) -> Optional[bool]:
        a, b = (np.asarray(torch.as_tensor(v).detach(), dtype=np.float64) for v in (ours, theirs))
        return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=1e-4))

    return agree


# ---- concept_maps -------------------------------------------------------------------------
def _concept_maps(batch: int) -> tuple[Calls, dict[str, str]]:
    from pyconcepts.ops import concept_maps
    from pyconcepts.reference import concept_maps as reference

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 512, 14, 14, generator=gen)
    w = torch.randn(100, 512, generator=gen) / 512**0.5
    b = torch.randn(100, generator=gen) * 0.1

    def ours() -> Any:
        with torch.no_grad():
            return concept_maps(x, w, b)

    def torch_conv() -> Any:
        with torch.no_grad():
            return reference.concept_maps(x, w, b)

    return {OURS: ours, "torch conv2d + ReLU": torch_conv}, {}


# ---- nnls ---------------------------------------------------------------------------------
def _nnls(batch: int) -> tuple[Calls, dict[str, str]]:
    from pyconcepts.ops import nnls

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(batch, 64, 16, generator=gen, dtype=torch.float64)
    b = torch.randn(batch, 64, generator=gen, dtype=torch.float64)
    calls: Calls = {OURS: lambda: nnls(a, b)}
    if not _have("scipy"):
        return calls, {"scipy.optimize.nnls (loop)": "scipy is not installed"}
    from scipy.optimize import nnls as scipy_nnls

    an, bn = a.numpy(), b.numpy()
    calls["scipy.optimize.nnls (loop)"] = lambda: np.stack(
        [scipy_nnls(an[i], bn[i])[0] for i in range(batch)]
    )
    return calls, {}


def _nnls_agree(impl: str, ours: Any, theirs: Any) -> Optional[bool]:
    x = ours.numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    return bool(np.abs(x - theirs).max() <= 1e-6 * (1 + np.abs(theirs).max()))


# ---- semi-hard triplet loss ---------------------------------------------------------------
def _triplet(n: int) -> tuple[Calls, dict[str, str]]:
    from bench.triplet import LABELS, Q, estimates_gib, ours_step, pml_step

    gen = torch.Generator().manual_seed(n)
    emb = torch.nn.functional.normalize(torch.randn(n, Q, generator=gen), dim=1)
    labels = torch.randint(0, LABELS, (n,), generator=gen)
    estimate = estimates_gib(n)
    calls: Calls = {OURS: lambda: ours_step(emb, labels, "cpu")}
    skipped: dict[str, str] = {}
    tools: dict[str, Callable[[], Any]] = {
        "torch (vectorised)": lambda: ours_step(emb, labels, "reference"),
        "pytorch-metric-learning": lambda: pml_step(emb, labels)[0],
    }
    for name, call in tools.items():
        if name == "pytorch-metric-learning" and not _have("pytorch_metric_learning"):
            skipped[name] = "not installed"
        elif estimate[name] > MEMORY_GUARD_GIB:
            skipped[name] = f"needs ~{estimate[name]:.0f} GiB"
        else:
            calls[name] = call
    return calls, skipped


def _loss_agree(impl: str, ours: Any, theirs: Any) -> Optional[bool]:
    if impl == "pytorch-metric-learning":
        return None  # its miner's semi-hard rule and averaging differ from FaceNet's: no oracle
    return abs(float(ours) - float(theirs)) <= 1e-4 * max(1.0, abs(float(theirs)))


# ---- frequent itemsets --------------------------------------------------------------------
SUPPORT = 0.01


def _itemsets(n: int) -> tuple[Calls, dict[str, str]]:
    from bench.itemsets import TOP, _tools, make_database

    indptr, indices = make_database(n)
    lists = indices.reshape(n, TOP + 1).tolist()
    min_count = math.ceil(SUPPORT * n)
    skipped: dict[str, str] = {}
    if not _have("fim"):
        skipped["pyfim"] = "not installed"
    if not _have("mlxtend"):
        skipped["mlxtend"] = "not installed"
    if skipped:
        from pyconcepts.ops import frequent_itemsets

        return {OURS: lambda: frequent_itemsets((indptr, indices), min_count)}, skipped
    tools = _tools(indptr, indices, lists, min_count, True, False)
    calls: Calls = {OURS: tools.pop("pyconcepts (CSR)")}
    calls.update({k: v for k, v in tools.items() if not k.startswith("pyconcepts")})
    return calls, skipped


def _same(impl: str, ours: Any, theirs: Any) -> Optional[bool]:
    return bool(ours == theirs)


KERNELS = [
    Kernel(
        "concept_maps",
        "concept maps ReLU(W·x + b) of x [B, 512, 14, 14], 100 concepts (float32, forward)",
        "batch B",
        {"quick": [4, 16, 32], "full": [8, 32, 64, 128, 256]},
        _concept_maps,
        _close(1e-3),
    ),
    Kernel(
        "nnls",
        "batched non-negative least squares, B problems of 64 × 16 (float64)",
        "problems B",
        {"quick": [100, 400, 1000], "full": [250, 1000, 2000, 4000, 8000]},
        _nnls,
        _nnls_agree,
    ),
    Kernel(
        "triplet",
        "semi-hard triplet loss + backward over N embeddings of 32 dims, 10 labels",
        "embeddings N",
        {"quick": [256, 512, 1024], "full": [256, 512, 1024, 2048, 4096, 8192]},
        _triplet,
        _loss_agree,
    ),
    Kernel(
        "itemsets",
        f"frequent itemsets of N transactions (10 of 128 filters + class), support {SUPPORT}",
        "transactions N",
        {"quick": [5_000, 20_000, 50_000], "full": [10_000, 30_000, 100_000, 300_000, 1_000_000]},
        _itemsets,
        _same,
    ),
]


def run_kernel(
    kernel: Kernel, sizes: list[int], repeats: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Time every implementation of ``kernel`` at ``sizes``; returns rows and skip reasons.

    Per size: one call of each implementation (warm-up, agreement check), then ``repeats``
    rounds calling each in turn, so that load from other work hits all of them alike. A row
    holds the best and the median of its timed calls; a first call over ``SLOW_S`` is the
    only one timed."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for size in sizes:
        calls, skips = kernel.setup(size)
        skipped.update(skips)
        times: dict[str, list[float]] = {}
        agreement: dict[str, Optional[bool]] = {}
        reference: Optional[Any] = None
        for impl, call in calls.items():
            start = time.perf_counter()
            output = call()
            times[impl] = [time.perf_counter() - start]
            if impl == OURS:
                reference = output
            agreement[impl] = True if impl == OURS else kernel.agree(impl, reference, output)
            if agreement[impl] is False:
                raise SystemExit(f"{kernel.name} at {size}: {impl} disagrees with {OURS}")
        timed = {impl: [] if t[0] < SLOW_S else t for impl, t in times.items()}
        for _ in range(repeats):
            for impl, call in calls.items():
                if timed[impl] is not times[impl]:
                    start = time.perf_counter()
                    call()
                    timed[impl].append(time.perf_counter() - start)
        for impl, values in timed.items():
            best, median = min(values), statistics.median(values)
            rows.append({"size": size, "impl": impl, "seconds": best, "median_seconds": median,
                         "runs": len(values), "agrees": agreement[impl]})  # fmt: skip
            log(f"  {kernel.name:13s} {size:>8} {impl:32s} {best:10.4f} s (median {median:.4f})")
    return {"rows": rows, "skipped": skipped}
