"""Semi-hard triplet loss, forward + backward: ours vs pytorch-metric-learning vs vectorised torch.

Competitors, on the same normalised float32 embeddings (Q = 32, 10 labels, Euclidean distance):
- ``pyconcepts``: the compiled kernel (FaceNet rule, per-anchor O(N) scratch).
- ``torch (vectorised)``: our reference twin, the straightforward O(N²)-memory torch version of
  the same rule (sort + searchsorted over the N×N distance matrix).
- ``pytorch-metric-learning``: TripletMarginMiner(type_of_triplets="semihard") +
  TripletMarginLoss. It enumerates all N³ (a, p, n) label triplets and keeps those with
  0 < d_an − d_ap ≤ margin — a different rule (many negatives per pair, none when no negative is
  semi-hard), so its loss is reported, not compared.

Time: median of repeats; peak memory: the largest resident-set growth sampled every 2 ms during
one extra run. Sizes whose inputs would exceed the memory guard are skipped with the estimate.
Run: ``python -m bench.triplet [--sizes 256 1024 4096 16384]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import threading
import time
from typing import Callable, Optional

import torch

from bench import _results
from bench._timing import median_seconds
from pyconcepts.ops import semihard_triplet_loss, semihard_triplets
from pyconcepts.reference import triplet as reference

Q = 32
LABELS = 10
MEMORY_GUARD_GIB = 6.0  # this machine is shared: skip runs estimated above this


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], object]) -> int:
    """Largest resident-set growth (bytes) while fn runs."""
    base, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss() - base)
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss() - base)


def pml_step(emb: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    from pytorch_metric_learning import losses, miners

    x = emb.clone().requires_grad_()
    triplets = miners.TripletMarginMiner(margin=1.0, type_of_triplets="semihard")(x, labels)
    loss = losses.TripletMarginLoss(margin=1.0)(x, labels, triplets)
    loss.backward()
    return loss.item(), int(triplets[0].numel())


def ours_step(emb: torch.Tensor, labels: torch.Tensor, backend: str) -> float:
    x = emb.clone().requires_grad_()
    loss = semihard_triplet_loss(x, labels, 1.0, squared=False, backend=backend)
    loss.backward()
    return loss.item()


def estimates_gib(n: int) -> dict[str, float]:
    """Rough peak-memory models (from the measured smaller sizes) used by the guard."""
    return {
        "pyconcepts": 3 * n * Q * 4 / 2**30,
        "torch (vectorised)": 72 * n * n / 2**30,
        "pytorch-metric-learning": n**3 * (1 + 24 / LABELS) / 2**30,
    }


def run(sizes: list[int]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        emb = torch.nn.functional.normalize(torch.randn(n, Q, generator=gen), dim=1)
        labels = torch.randint(0, LABELS, (n,), generator=gen)
        est = estimates_gib(n)
        repeats = 5 if n <= 1024 else (3 if n <= 4096 else 1)
        steps: dict[str, Callable[[], object]] = {
            "pyconcepts": functools.partial(ours_step, emb, labels, "cpu"),
            "torch (vectorised)": functools.partial(ours_step, emb, labels, "reference"),
            "pytorch-metric-learning": functools.partial(pml_step, emb, labels),
        }
        # Agreement first: same triplets and loss as the reference wherever it runs.
        ours_loss = ours_step(emb, labels, "cpu")
        agree: Optional[bool] = None
        if est["torch (vectorised)"] <= MEMORY_GUARD_GIB:
            got = semihard_triplets(emb, labels, backend="cpu")
            want = reference.semihard_triplets(emb.double(), labels)
            same = float((got[2] == want[2]).double().mean())
            ref_loss = ours_step(emb, labels, "reference")
            agree = same > 0.999 and abs(ref_loss - ours_loss) <= 1e-4 * max(1.0, abs(ref_loss))
            if not agree:
                raise SystemExit(f"N={n}: kernel and reference disagree ({same=}, losses)")
        for name, step in steps.items():
            row: dict[str, object] = {"n": n, "q": Q, "labels": LABELS, "method": name}
            if est[name] > MEMORY_GUARD_GIB:
                row["skipped"] = f"needs ~{est[name]:.0f} GiB (estimate)"
            else:
                row["peak_mib"] = peak_memory(step) / 2**20
                row["seconds"] = median_seconds(
                    step, 1 if name == "pytorch-metric-learning" else repeats
                )
                if name == "pytorch-metric-learning":
                    row["loss"], row["triplets"] = pml_step(emb, labels)
                else:
                    row["loss"] = ours_loss
                    row["agrees_with_reference"] = agree
            rows.append(row)
            print(row, flush=True)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| N | method | time (s) | × slower than ours | peak RSS (MiB) | loss |",
        "|---|---|---|---|---|---|",
    ]
    ours = {r["n"]: r["seconds"] for r in rows if r["method"] == "pyconcepts" and "seconds" in r}
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['n']} | {r['method']} | skipped: {r['skipped']} | | | |")
            continue
        ratio = float(r["seconds"]) / float(ours[r["n"]])  # type: ignore[arg-type]
        lines.append(
            f"| {r['n']} | {r['method']} | {r['seconds']:.3f} | {ratio:.1f} | "
            f"{r['peak_mib']:.0f} | {r['loss']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = run(args.sizes)
    print(table(rows))
    info = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "rows": rows}
    print(f"wrote {_results.save('triplet', info)}")


if __name__ == "__main__":
    main()
