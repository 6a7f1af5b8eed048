"""Benchmark: AfI's batched multi-class occluder optimisation vs a per-class loop.

There is no public AfI implementation to compare with; the natural way to write the seed's
algorithm is one Adam loop per class, which is what ``fit_occluders(batched=False)`` runs with
the same code, randomness and stopping rule. Both run on cw-vgg, the same images, in one
process; the occluders must agree before anything is timed. Run: ``python -m bench.afi``.
"""

from __future__ import annotations

import argparse

import torch

from bench import _results
from bench._timing import median_seconds
from pyconcepts.data.concept_world import ConceptWorld
from pyconcepts.explainers.afi import fit_occluders
from pyconcepts.models import load


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load("cw-vgg", progress=False)
    world = ConceptWorld(40 * args.classes, seed=11)
    x, y = world.tensors()
    classes = list(range(args.classes))
    idx = torch.cat([(y == c).nonzero().flatten()[: args.per_class] for c in classes])
    x, y = x[idx], y[idx]
    # max_iter only, no early stop differences: both paths share the stopping rule
    kw = dict(max_iter=args.iters, seed=0)
    batched = fit_occluders(model, x, y, classes, batched=True, **kw)
    looped = fit_occluders(model, x, y, classes, batched=False, **kw)
    diff = float((batched.delta - looped.delta).abs().max())
    if diff > 1e-4 or not torch.equal(batched.iterations, looped.iterations):
        raise SystemExit(f"batched and per-class occluders disagree (max |Δδ| = {diff:.2e})")
    t_batched = median_seconds(
        lambda: fit_occluders(model, x, y, classes, batched=True, **kw), args.repeats
    )
    t_loop = median_seconds(
        lambda: fit_occluders(model, x, y, classes, batched=False, **kw), args.repeats
    )
    result = {
        "classes": args.classes,
        "images_per_class": args.per_class,
        "image_size": int(x.shape[-1]),
        "max_iter": args.iters,
        "adam_steps_total": int(batched.iterations.sum()),
        "max_abs_delta_difference": diff,
        "per_class_loop_s": t_loop,
        "batched_s": t_batched,
        "speedup": t_loop / t_batched,
        "threads": torch.get_num_threads(),
    }
    print("| method | K | images/class | max_iter | Adam steps | median s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, t in (("per-class loop", t_loop), ("batched (ours)", t_batched)):
        print(
            f"| {name} | {args.classes} | {args.per_class} | {args.iters} | "
            f"{result['adam_steps_total']} | {t:.2f} | {t_loop / t:.2f}× |"
        )
    _results.save("afi", result)
    return result


if __name__ == "__main__":
    main()
