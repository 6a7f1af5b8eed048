"""Demo step: AfI on cw-vgg — occluders and their attack success, concept rankings against the
ground truth, class impressions, the concept-editing curves (AfI vs TCAV vs random) and the
distillation table (AfI, TCAV gradients, AfI without t).

Sizes are small so the step fits the demo's budget on 2 CPU cores; the method's defaults are
in :class:`pyconcepts.explainers.afi.AfI`.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from pyconcepts.data.concept_world import ConceptWorld
from pyconcepts.demo import DemoContext
from pyconcepts.explainers import afi
from pyconcepts.explainers.tcav import gradient_feature_importance, tcav_concept_scores
from pyconcepts.metrics.afi import topk_precision

IMAGES_PER_CLASS = 8  # occluder images per class (2 of them held out for the attack rate)
MAX_ITER = 40
IMPRESSION_STEPS = 30
N_PROBE = 12
N_EDIT = 6  # test images per class in the editing test
N_DISTILL = 30  # images per side of each class's balanced distillation set


def _subset(world: ConceptWorld, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = world.tensors()
    idx = torch.cat([(y == c).nonzero().flatten()[:per_class] for c in range(len(world.classes))])
    return x[idx], y[idx]


def run(ctx: DemoContext) -> dict[str, Any]:
    folder = ctx.step_dir("afi")
    model, world, test = ctx.model("cw-vgg"), ctx.train, ctx.test
    x, y = _subset(world, IMAGES_PER_CLASS)
    probes, benchmarks = afi.probe_sets(world, N_PROBE)
    common: dict[str, Any] = dict(max_iter=MAX_ITER, holdout_fraction=0.25)
    explainer = afi.AfI(
        model, impression_steps=IMPRESSION_STEPS, n_probe=N_PROBE,
        class_names=world.class_names, **common,
    )  # fmt: skip
    explainer.fit((x, y), probes, benchmarks, concept_names=world.concepts, progress=ctx.progress)
    explainer.save(folder / "afi.pcx")
    ctx.save_explanation("afi", explainer, "cw-vgg", test.image(slice(0, 4)))
    classes, layers = explainer.classes_, explainer.layers_
    # baselines: TCAV (CAV ranking + gradient FIS) and the seed's ablation without t
    tcav_rank = tcav_concept_scores(model, layers, probes, benchmarks, x, y, classes, epochs=50)
    grad_cis = {
        n: afi.channel_importance(s)
        for n, s in gradient_feature_importance(model, layers, x, y, classes).items()
    }
    no_t = afi.AfI(model, use_transform=False, impression_steps=0, **common).fit((x, y))
    truth = world.class_concept_matrix()
    gt = {
        name: [
            topk_precision(r[k], truth[c].nonzero().flatten().tolist())
            for k, c in enumerate(classes)
        ]
        for name, r in (("afi", explainer.concept_importance_), ("tcav", tcav_rank))
    }
    curves = afi.editing_curves(
        model,
        test,
        {"afi": explainer.concept_importance_, "tcav": tcav_rank},
        classes,
        n_images=N_EDIT,
    )
    tx, ty = test.tensors()
    distill = afi.distillation_test(
        model, layers, {"afi": explainer.cis_, "tcav": grad_cis, "afi_without_t": no_t.cis_},
        tx, ty, classes, n_per_class=N_DISTILL,
    )  # fmt: skip
    figures = {
        "impressions_and_occluders.png": explainer.plot_impressions(),
        "meta_heatmaps.png": explainer.plot_heatmaps(tx[:4]),
        "editing_curves.png": afi.plot_editing_curves(curves),
    }
    plt = afi.pyplot()
    for name, fig in figures.items():
        fig.savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
    names = world.class_names
    result: dict[str, Any] = {
        "attack_success_heldout": dict(zip(names, explainer.attack_success_.tolist())),
        "occluder_iterations": dict(zip(names, explainer.occluder_iterations_.tolist())),
        "impression_layer": explainer.impression_layer_,
        "impression_recognised": explainer.impression_rates_,
        "top_concepts": {
            names[c]: [
                world.concepts[int(i)]
                for i in explainer.concept_importance_[k].argsort(descending=True)[:4]
            ]
            for k, c in enumerate(classes)
        },
        "ground_truth_precision": {k: sum(v) / len(v) for k, v in gt.items()},
        "editing_auc": {
            mode: {m: float(t.nanmean(0)[1:].mean()) for m, t in d.items()}
            for mode, d in curves.items()
        },
        "editing_curves": {
            mode: {m: t.nanmean(0).tolist() for m, t in d.items()} for mode, d in curves.items()
        },
        "distillation_accuracy": {m: float(v.nanmean()) for m, v in distill.items()},
    }
    (folder / "afi.json").write_text(json.dumps(result, indent=2))
    return {
        "attack_success_mean": round(float(explainer.attack_success_.nanmean()), 3),
        "gt_precision_afi": round(result["ground_truth_precision"]["afi"], 3),
        "gt_precision_tcav": round(result["ground_truth_precision"]["tcav"], 3),
        "distill_afi": round(result["distillation_accuracy"]["afi"], 3),
        "distill_tcav": round(result["distillation_accuracy"]["tcav"], 3),
        "distill_afi_without_t": round(result["distillation_accuracy"]["afi_without_t"], 3),
        "impression_layer": explainer.impression_layer_,
        "details": str(folder / "afi.json"),
    }
