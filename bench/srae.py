"""SRAE training: one grouped model for all classes vs a Python loop of per-class trainings,
and vs the grouped model trained ``--class-batch`` classes at a time (SRAE's
``class_batch_size``, which bounds the optimiser state to one part's).

Same initial weights, same mini-batches, same Adam settings; agreement (per-class losses, and
final weights, where Adam turns float32 rounding into steps of up to ``lr`` on near-zero
gradients) is checked first, then all are timed (median of repeats) in this process.
Run: ``python -m bench.srae [--classes 10 --n 2000 --epochs 3 --class-batch 32 --device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pyconcepts.explainers.srae_training import (
    GroupedAutoencoder,
    LossConfig,
    class_samples,
    train_grouped,
)


def _setup(k: int, n: int, d: int, device: str):
    gen = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(n, d, generator=gen))
    z = (z - z.mean(0)) / z.std(0)
    labels = torch.randint(0, k, (n,), generator=gen)
    target = torch.randn(k, n, generator=gen) * 3
    mask, weight = class_samples(labels, list(range(k)), None, None, None)
    grouped = GroupedAutoencoder(k, d, (800, 100), 5, generator=torch.Generator().manual_seed(1))
    return (z.to(device), target.to(device), mask.to(device), weight.to(device)), grouped.to(device)


def _train(module, z, target, mask, weight, epochs, batch, class_batch=None):
    return train_grouped(
        module, z, target, mask, weight, None, LossConfig(), epochs, batch,
        generator=torch.Generator().manual_seed(2), progress=False, class_batch_size=class_batch,
    )  # fmt: skip


def _grouped(data, module, epochs, batch, class_batch=None):
    return _train(module, *data, epochs, batch, class_batch)


def _loop(data, singles, epochs, batch):
    z, target, mask, weight = data
    return [
        _train(m, z, target[k : k + 1], mask[k : k + 1], weight[k : k + 1], epochs, batch)
        for k, m in enumerate(singles)
    ]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--class-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    k, dev = args.classes, args.device

    data, grouped = _setup(k, args.n, args.dim, dev)
    singles = [grouped.group(i) for i in range(k)]
    res_g = _grouped(data, grouped, 1, args.batch)
    res_l = _loop(data, singles, 1, args.batch)
    loss_g = torch.tensor(res_g.train_loss[0])
    loss_l = torch.tensor([r.train_loss[0][0] for r in res_l])
    loss_diff = float(((loss_g - loss_l).abs() / loss_l.abs()).max())
    weight_diff = max(
        float((a - b).detach().abs().max())
        for i, s in enumerate(singles)
        for (_, a), (_, b) in zip(grouped.group(i).named_parameters(), s.named_parameters())
    )
    data, parts = _setup(k, args.n, args.dim, dev)
    res_p = _grouped(data, parts, 1, args.batch, args.class_batch)
    loss_p = torch.tensor(res_p.train_loss[0])
    parts_loss_diff = float(((loss_p - loss_g).abs() / loss_g.abs()).max())
    parts_diff = max(
        float((a - b).detach().abs().max())
        for (_, a), (_, b) in zip(grouped.named_parameters(), parts.named_parameters())
    )
    print(f"agreement after 1 epoch with the grouped run: per-class loop max rel loss diff "
          f"{loss_diff:.2e}, max weight diff {weight_diff:.2e}; in parts {parts_loss_diff:.2e} "
          f"and {parts_diff:.2e}")  # fmt: skip
    if max(loss_diff, parts_loss_diff) > 1e-3:
        raise SystemExit("grouped, per-class and part-wise trainings disagree")

    times: dict[str, list[float]] = {"grouped": [], "parts": [], "loop": []}
    for _ in range(args.repeats):
        for name in times:
            data, grouped = _setup(k, args.n, args.dim, dev)
            singles = [grouped.group(i) for i in range(k)]
            _sync(dev)
            t0 = time.perf_counter()
            if name == "loop":
                _loop(data, singles, args.epochs, args.batch)
            else:
                part = args.class_batch if name == "parts" else None
                _grouped(data, grouped, args.epochs, args.batch, part)
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    device_name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    size = (
        f"K={k} classes, N={args.n}, D={args.dim}, 800-100-5, batch {args.batch}, "
        f"{args.epochs} epochs"
    )
    print(f"\n{size}, {device_name} ({torch.get_num_threads()} threads)\n")
    print("| training | median s | ratio |\n|---|---|---|")
    print(f"| grouped (one model, batched matmuls) | {med['grouped']:.3f} | 1.00 |")
    print(f"| grouped, {args.class_batch} classes at a time | {med['parts']:.3f} | "
          f"{med['parts'] / med['grouped']:.2f} |")  # fmt: skip
    print(f"| per-class loop | {med['loop']:.3f} | {med['loop'] / med['grouped']:.2f} |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "srae.json").write_text(json.dumps({
        "size": size, "device": device_name, "times": times, "median": med,
        "speedup": med["loop"] / med["grouped"], "loss_rel_diff": loss_diff,
        "weight_diff": weight_diff, "class_batch": args.class_batch,
        "parts_loss_rel_diff": parts_loss_diff, "parts_weight_diff": parts_diff,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
