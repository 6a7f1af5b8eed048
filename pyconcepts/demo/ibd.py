"""Demo step: Interpretable Basis Decomposition of the concept world's ResNet-like model.

Prints/writes the concept classifiers' average precision (the seed's Table 1 analogue), the
residual ratio of the class decompositions, the ground-truth precision of the class bases
(do they name the concepts that define each class?), IBD heatmap figures (seed Fig. 4), the
class → concept graph (Fig. 3) and the Grad-CAM decomposition of a batch of 256 test images.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from pyconcepts.demo import DemoContext
from pyconcepts.explainers.ibd import IBD


def run(ctx: DemoContext) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    folder = ctx.step_dir("ibd")
    model = ctx.model("cw-resnet")
    world, test = ctx.train, ctx.test
    start = time.perf_counter()
    ibd = IBD(model, layer="layer3", max_images=1000).fit(world)
    fit_s = time.perf_counter() - start
    ibd.save(folder / "ibd.pcx")
    ctx.save_explanation("ibd", ibd, "cw-resnet", test.image(slice(0, 8)))
    gt = ibd.ground_truth_scores(world.class_concept_matrix())

    images = test.image(slice(0, 256))
    result = ibd.explain(images)
    logit = result.logits.gather(1, result.targets[:, None])[:, 0]
    sum_error = float((result.extras["score"] - logit).abs().max())
    for i in range(4):
        fig = result.plot(i, images[i])
        fig.savefig(folder / f"heatmaps_{i}.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    fig = ibd.plot_class_concept_graph()
    fig.savefig(folder / "class_concept_graph.png", dpi=90, bbox_inches="tight")
    plt.close(fig)

    start = time.perf_counter()
    per_image = ibd.explain(images, per_image=True)  # Grad-CAM decomposition, one kernel call
    gradcam_s = time.perf_counter() - start
    agree = per_image.extras["basis_indices"][:, 0] == result.extras["basis_indices"][:, 0]

    report = {
        "concept_ap": dict(zip(ibd.concept_names_, [round(float(v), 3) for v in ibd.concept_ap_])),
        "class_bases": [list(e) for e in ibd.class_concept_graph()],
        "residual_ratio": dict(
            zip(ibd.class_names_, [round(float(v), 3) for v in ibd.residual_ratio_])
        ),
        "ground_truth_precision": dict(
            zip(ibd.class_names_, [round(float(v), 3) for v in gt["precision_at_k"]])
        ),
        "ground_truth_recall": dict(
            zip(ibd.class_names_, [round(float(v), 3) for v in gt["recall"]])
        ),
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    return {
        "concept_mAP": round(float(ibd.concept_ap_.nanmean()), 3),
        "mean_residual_ratio": round(float(ibd.residual_ratio_.mean()), 3),
        "gt_precision_at_k": round(float(gt["mean_precision_at_k"]), 3),
        "gt_recall": round(float(gt["mean_recall"]), 3),
        "contribution_sum_max_error": sum_error,
        "gradcam_batch_256_s": round(gradcam_s, 3),
        "gradcam_top_concept_agrees_with_cam": round(float(agree.float().mean()), 3),
        "fit_s": round(fit_s, 1),
        "figure": str(folder / "heatmaps_0.png"),
        "graph": str(folder / "class_concept_graph.png"),
        "test_accuracy": round(float((result.predictions == test.labels[:256]).float().mean()), 3),
        "torch_threads": torch.get_num_threads(),
    }
