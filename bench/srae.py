"""SRAE training: one grouped model for all classes vs a Python loop of per-class trainings.

Same initial weights, same mini-batches, same Adam settings; agreement (per-class losses and
final weights) is checked first, then both are timed (median of repeats) in this process.
Run: ``python -m bench.srae [--classes 10 --n 2000 --epochs 3 --device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pyconcepts.explainers.srae import GroupedAutoencoder, LossConfig, class_samples, train_grouped


def _setup(k: int, n: int, d: int, device: str):
    gen = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(n, d, generator=gen))
    z = (z - z.mean(0)) / z.std(0)
    labels = torch.randint(0, k, (n,), generator=gen)
    target = torch.randn(k, n, generator=gen) * 3
    mask, weight = class_samples(labels, list(range(k)), None, None, None)
    grouped = GroupedAutoencoder(k, d, (800, 100), 5, generator=torch.Generator().manual_seed(1))
    return (z.to(device), target.to(device), mask.to(device), weight.to(device)), grouped.to(device)


def _train(module, z, target, mask, weight, epochs, batch):
    return train_grouped(
        module, z, target, mask, weight, None, LossConfig(), epochs, batch,
        generator=torch.Generator().manual_seed(2), progress=False,
    )  # fmt: skip


def _grouped(data, module, epochs, batch):
    return _train(module, *data, epochs, batch)


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
    print(f"agreement after 1 epoch: max rel loss diff {loss_diff:.2e}, "
          f"max weight diff {weight_diff:.2e}")  # fmt: skip
    if loss_diff > 1e-3:
        raise SystemExit("grouped and per-class trainings disagree")

    times: dict[str, list[float]] = {"grouped": [], "loop": []}
    for _ in range(args.repeats):
        for name in ("grouped", "loop"):
            data, grouped = _setup(k, args.n, args.dim, dev)
            singles = [grouped.group(i) for i in range(k)]
            _sync(dev)
            t0 = time.perf_counter()
            if name == "grouped":
                _grouped(data, grouped, args.epochs, args.batch)
            else:
                _loop(data, singles, args.epochs, args.batch)
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
    print(f"| per-class loop | {med['loop']:.3f} | {med['loop'] / med['grouped']:.2f} |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "srae.json").write_text(json.dumps({
        "size": size, "device": device_name, "times": times, "median": med,
        "speedup": med["loop"] / med["grouped"], "loss_rel_diff": loss_diff,
        "weight_diff": weight_diff,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
