"""``python -m bench.ibd_vocabulary``: how much of the zoo models' classes IBD's basis explains
with the concept world's 16 attribute concepts, and with part-level concepts added.

The world's classes are conjunctions of part attributes (a *red circle* and a *striped
square*), while its 16 concepts are single attributes (``shape:circle``, ``colour:red``, ...).
To test whether that vocabulary is what leaves IBD's residual high, the same fit is repeated
with shape & colour conjunctions as extra concepts: the mask of "circle & red" is the pixels of
the parts that are both (the AND of the two attribute masks: each pixel belongs to one part).
Conjunctions shown on fewer than ``MIN_IMAGES`` fit images are left out.

Prints one row per model and vocabulary (concepts, mean residual ratio, basis terms per class)
and the bases of the part-level fit; writes ``bench/results/ibd_vocabulary.json``.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any, Optional

import torch

from bench._results import save
from pyconcepts.data.concept_world import ConceptWorld
from pyconcepts.explainers import IBD
from pyconcepts.models import zoo
from pyconcepts.scoreboard import FIT_SEED  # the quality scoreboard's fit world

MIN_IMAGES = 5


def conjunctions(world: ConceptWorld, masks: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Shape & colour conjunction masks ``[N, S·C, H, W]`` of attribute ``masks`` and names."""
    shapes = [i for i, n in enumerate(world.concepts) if n.startswith("shape:")]
    colours = [i for i, n in enumerate(world.concepts) if n.startswith("colour:")]
    out = torch.stack([masks[:, s] & masks[:, c] for s in shapes for c in colours], 1)
    names = [f"{world.concepts[s]}&{world.concepts[c]}" for s in shapes for c in colours]
    return out, names


def fit_vocabularies(model_name: str, world: ConceptWorld) -> list[dict[str, Any]]:
    model = zoo.load(model_name, progress=False).eval()
    images = world.image(slice(None))
    attributes = world.concept_masks(slice(None))
    pairs, pair_names = conjunctions(world, attributes)
    vocabularies = {
        "attributes": (attributes, list(world.concepts)),
        "attributes + shape&colour": (torch.cat([attributes, pairs], 1),
                                      [*world.concepts, *pair_names]),
    }  # fmt: skip
    rows = []
    for vocabulary, (masks, names) in vocabularies.items():
        seen = masks.flatten(2).any(2).sum(0) >= MIN_IMAGES
        kept = [n for n, k in zip(names, seen.tolist()) if k]
        with warnings.catch_warnings():  # a class with an empty basis is reported in the row
            warnings.simplefilter("ignore")
            ibd = IBD(model, layer=zoo.ZOO[model_name].feature_layer)
            ibd.fit((images, masks[:, seen].float()), concept_names=kept)
        bases = {
            world.class_names[k]: [kept[int(i)] for i, c in zip(ibd.basis_indices_[k],
                                                               ibd.basis_coefs_[k]) if c > 0]
            for k in range(len(world.class_names))
        }  # fmt: skip
        rows.append({
            "model": model_name,
            "vocabulary": vocabulary,
            "concepts": len(kept),
            "basis_metric": ibd.basis_metric_,
            "residual_ratio": float(ibd.residual_ratio_.mean()),
            "terms_per_class": float((ibd.basis_coefs_ > 0).sum(1).float().mean()),
            "bases": bases,
        })  # fmt: skip
    return rows


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.ibd_vocabulary",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--n-fit", type=int, default=1000, help="fit-world images (1000)")
    parser.add_argument("--models", nargs="+", default=["cw-resnet", "cw-vgg"])
    args = parser.parse_args(argv)
    world = ConceptWorld(args.n_fit, seed=FIT_SEED)
    rows = [row for m in args.models for row in fit_vocabularies(m, world)]
    print("| model | vocabulary | concepts | basis metric | residual | terms / class |")
    print("|---|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['vocabulary']} | {r['concepts']} | {r['basis_metric']} | "
              f"{100 * r['residual_ratio']:.1f} % | {r['terms_per_class']:.1f} |")  # fmt: skip
    for r in rows:
        if r["vocabulary"] != "attributes":
            print(f"\n{r['model']}, {r['vocabulary']}:")
            for cls, basis in r["bases"].items():
                print(f"  {cls}: {', '.join(basis) or '(empty)'}")
    print(f"wrote {save('ibd_vocabulary', rows)}")
    return rows


if __name__ == "__main__":
    main()
