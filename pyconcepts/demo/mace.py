"""Demo step: MACE on the VGG-like concept-world model, with its metrics and ground-truth score."""

from __future__ import annotations

import json
from typing import Any

import torch

from pyconcepts.attribution.gradcam import grad_cam
from pyconcepts.demo import DemoContext
from pyconcepts.explainers.mace import MACE
from pyconcepts.metrics import saliency

EPOCHS = 24  # the paper trains 64 epochs at lr 1e-4; the demo uses lr 1e-3 to fit in minutes
N_EVAL = 100  # maps of all K·C concepts at 64 px: 16 MiB per 10 images


def _predicted_class_maps(maps: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    """``[B,K,C,H,W]`` → the predicted class's C maps ``[B,C,H,W]``."""
    return maps[torch.arange(maps.shape[0]), preds]


def run(ctx: DemoContext) -> dict[str, Any]:
    folder = ctx.step_dir("mace")
    model = ctx.model("cw-vgg")
    x, y = ctx.train.tensors()
    explainer = MACE(model, lr=1e-3, epochs=EPOCHS).fit((x, y), progress=ctx.progress)
    explainer.save(folder / "mace.pcx")

    xt, yt = ctx.test.tensors()
    xt, yt = xt[:N_EVAL], yt[:N_EVAL]
    explanation = explainer.explain(xt)
    ctx.save_explanation("mace", explainer, "cw-vgg", xt[:8])
    preds = explanation.predictions
    maps = explainer.concept_maps_of(xt)

    def mace_maps(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = model(images).argmax(1)
        return _predicted_class_maps(explainer.concept_maps_of(images), p)

    def cam_maps(images: torch.Tensor) -> torch.Tensor:
        return grad_cam(model, explainer.layer_, images).cam[:, None]

    feats = explainer._extract(xt)[0]
    rand = saliency.random_maps(feats, explainer.n_concepts, tuple(xt.shape[-2:]))
    faithful = {
        "mace": saliency.faithfulness(model, xt, _predicted_class_maps(maps, preds)),
        "gradcam": saliency.faithfulness(model, xt, cam_maps(xt)),
        "random": saliency.faithfulness(model, xt, rand),
    }
    robust = {
        "mace": saliency.robustness(mace_maps, xt[:64]),
        "gradcam": saliency.robustness(cam_maps, xt[:64]),
    }
    rel = explanation.extras["relevance"]
    probs = explanation.logits.softmax(1)
    active = explainer.head_.active
    first = int(yt[0])  # S5: 10 images of one class, 5 of its concepts (pruned or not)
    own = (yt == first).nonzero().flatten()[:10]
    stab = saliency.stability(explanation.extras["embeddings"][own, first, :5])
    ranks = saliency.relevance_vs_rank(rel, probs, yt, active)
    gt, defining = ctx.test.concept_masks(slice(0, N_EVAL)), ctx.test.class_concept_matrix()
    truth = saliency.ground_truth_score(maps, active, gt, yt, defining)
    all_maps = explainer.concept_maps_of(xt, pruned=False)
    truth_all = saliency.ground_truth_score(all_maps, torch.ones_like(active), gt, yt, defining)

    summary = {
        "fit_epochs": EPOCHS,
        "concepts_kept": int(active.sum()),
        "concepts_total": int(active.numel()),
        "pruned_by_rule": {
            r: list(explainer.pruned_.values()).count(r) for r in set(explainer.pruned_.values())
        },
        "final_losses": {
            k: round(v, 4) for k, v in explainer.history_[-1].items() if k not in ("stage", "epoch")
        },
        "faithfulness_drop_at_0.5": {m: round(f[0.5]["drop"], 4) for m, f in faithful.items()},
        "faithfulness_area_at_0.5": {m: round(f[0.5]["area"], 4) for m, f in faithful.items()},
        "robustness_iou_at_0.5": {
            m: {p: round(v[0.5], 4) for p, v in r.items()} for m, r in robust.items()
        },
        "stability_ratio": round(float(stab["ratio"]), 4),  # type: ignore[arg-type]
        "relevance_below_average_pct_by_rank": [round(v, 2) for v in ranks],
        "ground_truth_mean_best_iou": round(float(truth["mean_best_iou"]), 4),  # type: ignore[arg-type]
        "ground_truth_found_fraction": round(float(truth["mean_found"]), 4),  # type: ignore[arg-type]
        "ground_truth_all_concepts_mean_best_iou": round(float(truth_all["mean_best_iou"]), 4),  # type: ignore[arg-type]
        "ground_truth_all_concepts_found_fraction": round(float(truth_all["mean_found"]), 4),  # type: ignore[arg-type]
        "model_test_accuracy": (getattr(model, "zoo_info", None) or {}).get("test_accuracy"),
    }
    details = {"faithfulness": faithful, "robustness": robust, "ground_truth": truth,
               "ground_truth_all_concepts": truth_all,
               "stability": {**stab, "matrix": stab["matrix"].tolist()},  # type: ignore[attr-defined]
               "pruned": explainer.pruned_, "history": explainer.history_}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(details, indent=2, default=str))
    return summary
