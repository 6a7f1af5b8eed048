"""CUDA kernels vs the same rule in torch on the same GPU, and vs our CPU kernel.

For each op: inputs on the GPU, agreement with the pure-torch reference twin (run on the GPU) and
with our CPU kernel checked first, then the median wall time of ``--repeats`` synchronised calls.
Ops: semi-hard triplet loss forward+backward (N = 4096, 16384; Q = 32; ``backend="cuda"``, not
the automatic choice; with the peak extra device memory of one step and whether the mined
triplets equal the CPU kernel's), batched ``nnls`` (2000 × 64×16 and 2000 × 2048×7),
``greedy_nnls_basis`` (K=1000, N=660, D=2048, T=7), ``itemset_support`` (1M transactions of 10
of 512 items, 20,000 query pairs). Needs a CUDA GPU.
Run: ``python -m bench.cuda_kernels``. (``concept_maps`` has its own: ``bench.concept_maps``.)
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from bench import _results
from bench._timing import median_seconds
from bench.nnls import random_problems
from pyconcepts import ops
from pyconcepts.ops import triplet as triplet_ops
from pyconcepts.reference import nnls as ref_nnls
from pyconcepts.reference import triplet as ref_triplet


def _gpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    def synced() -> None:
        fn()
        torch.cuda.synchronize()

    synced()  # warm-up
    return median_seconds(synced, repeats)


def _triplet(n: int, repeats: int) -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(n, 32, generator=gen), dim=1)
    labels = torch.randint(0, 10, (n,), generator=gen)
    cuda_emb, cuda_labels = emb.cuda().requires_grad_(), labels.cuda()
    ours_fn = functools.partial(ops.semihard_triplet_loss, backend="cuda")  # not the dispatch's

    def step(fn: Callable[..., torch.Tensor], e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e.grad = None
        loss = fn(e, y)
        loss.backward()
        return loss.detach()

    ours = step(ours_fn, cuda_emb, cuda_labels)
    row: dict[str, object] = {"op": "semihard_triplet_loss fwd+bwd", "size": f"N={n}, Q=32"}
    cpu = step(ops.semihard_triplet_loss, emb.clone().requires_grad_(), labels)
    assert abs(ours.item() - cpu.item()) < 1e-4, (ours.item(), cpu.item())
    mined = ops.semihard_triplets(cuda_emb.detach(), cuda_labels, backend="cuda")
    mined_cpu = ops.semihard_triplets(emb, labels, backend="cpu")
    row["same_triplets_as_cpu"] = all(torch.equal(a.cpu(), b) for a, b in zip(mined, mined_cpu))
    del mined, mined_cpu
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(ours_fn, cuda_emb, cuda_labels)
    row["ours_cuda_peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    row["ours_cuda_s"] = _gpu_seconds(lambda: step(ours_fn, cuda_emb, cuda_labels), repeats)
    free, _ = torch.cuda.mem_get_info()
    if triplet_ops._twin_bytes(cuda_emb) <= free // 2:  # N x N matrices, sorted per row
        ref = step(ref_triplet.semihard_triplet_loss, cuda_emb, cuda_labels)
        assert abs(ours.item() - ref.item()) < 1e-4, (ours.item(), ref.item())
        row["torch_cuda_s"] = _gpu_seconds(
            lambda: step(ref_triplet.semihard_triplet_loss, cuda_emb, cuda_labels), repeats
        )
    cpu_emb = emb.clone().requires_grad_()
    row["ours_cpu_s"] = median_seconds(lambda: step(ops.semihard_triplet_loss, cpu_emb, labels), 1)
    return row


def _nnls(batch: int, m: int, n: int, repeats: int) -> dict[str, object]:
    A, b = random_problems(batch, m, n)
    A_cuda, b_cuda = A.cuda(), b.cuda()
    x = ops.nnls(A_cuda, b_cuda)
    x_cpu = ops.nnls(A, b)
    scale = float(x_cpu.abs().max())
    assert float((x.cpu() - x_cpu).abs().max()) <= 1e-9 * max(1.0, scale)
    return {
        "op": "nnls (float64)",
        "size": f"{batch} x ({m}x{n})",
        "ours_cuda_s": _gpu_seconds(lambda: ops.nnls(A_cuda, b_cuda), repeats),
        "ours_cpu_s": median_seconds(lambda: ops.nnls(A, b), repeats),
    }


def _greedy(repeats: int) -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(1000, 2048, generator=gen, dtype=torch.float64)
    candidates = torch.randn(660, 2048, generator=gen, dtype=torch.float64)
    t_cuda, c_cuda = targets.cuda(), candidates.cuda()
    fit = ops.greedy_nnls_basis(t_cuda, c_cuda, 7)
    fit_cpu = ops.greedy_nnls_basis(targets, candidates, 7)
    same = bool(torch.equal(fit.indices.cpu(), fit_cpu.indices))
    ref = ref_nnls.greedy_nnls_basis(t_cuda[:8], c_cuda, 7)
    assert torch.equal(ref.indices.cpu(), fit_cpu.indices[:8])
    return {
        "op": "greedy_nnls_basis (float64)",
        "size": "K=1000, N=660, D=2048, T=7",
        "same_selection_as_cpu": same,
        "ours_cuda_s": _gpu_seconds(lambda: ops.greedy_nnls_basis(t_cuda, c_cuda, 7), repeats),
        "ours_cpu_s": median_seconds(lambda: ops.greedy_nnls_basis(targets, candidates, 7), 1),
    }


def _support(repeats: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    n, k = 1_000_000, 10
    indices = np.argsort(rng.random((n, 512)), axis=1)[:, :k].astype(np.int64).ravel()
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    queries = [tuple(int(v) for v in rng.choice(512, 2, replace=False)) for _ in range(20_000)]
    cuda_db = (torch.from_numpy(indptr).cuda(), torch.from_numpy(indices).cuda())
    counts = ops.itemset_support(cuda_db, queries)
    cpu_counts = ops.itemset_support((indptr, indices), queries)
    assert np.array_equal(counts.cpu().numpy(), cpu_counts)
    return {
        "op": "itemset_support",
        "size": "1M transactions x 10 of 512 items, 20,000 pairs",
        "ours_cuda_s": _gpu_seconds(lambda: ops.itemset_support(cuda_db, queries), repeats),
        "ours_cpu_s": median_seconds(lambda: ops.itemset_support((indptr, indices), queries), 1),
    }


def main() -> list[dict[str, object]]:
    if not torch.cuda.is_available():
        raise SystemExit("bench.cuda_kernels needs a CUDA GPU")
    repeats = 5
    rows = [
        _triplet(4096, repeats),
        _triplet(16384, repeats),
        _nnls(2000, 64, 16, repeats),
        _nnls(2000, 2048, 7, repeats),
        _greedy(repeats),
        _support(repeats),
    ]
    device = torch.cuda.get_device_name()
    print(f"device: {device}; CPU threads: {torch.get_num_threads()}")
    print("| op | size | ours CUDA s | torch CUDA s | ours CPU s |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        torch_s = r.get("torch_cuda_s")
        print(
            f"| {r['op']} | {r['size']} | {r['ours_cuda_s']:.5f} | "
            f"{'' if torch_s is None else f'{torch_s:.5f}'} | {r['ours_cpu_s']:.4f} |"
        )
    for r in rows:
        if "same_triplets_as_cpu" in r:
            print(
                f"triplets {r['size']}: same triplets as the CPU kernel: "
                f"{r['same_triplets_as_cpu']}; peak extra memory of one step: "
                f"{r['ours_cuda_peak_extra_mib']:.1f} MiB"
            )
    _results.save("cuda_kernels", {"device": device, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
