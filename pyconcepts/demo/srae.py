"""Demo step: SRAE on cw-vgg's first dense layer — the seed's comparison table (SRAE, NN, SAE,
Lasso, CAE, Z, ExcitationBP) on the concept world, and x-feature heatmaps of test images."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from pyconcepts.demo import DemoContext
from pyconcepts.explainers.srae import SRAE
from pyconcepts.explainers.srae_compare import compare, table_markdown

# Sizes that keep the step to minutes on 2 CPU cores (the paper's architecture, fewer epochs).
TRAINING: dict[str, Any] = {"epochs": 15, "patience": 3, "batch_size": 256}


def run(ctx: DemoContext) -> dict[str, Any]:
    model = ctx.model("cw-vgg")
    folder = ctx.step_dir("srae")
    results, explainers = compare(
        model, ctx.train, ctx.test, n_eval=6, n_z_units=8, progress=ctx.progress, **TRAINING
    )
    table = table_markdown(results)
    (folder / "table.md").write_text(table + "\n")
    explainer: SRAE = explainers["SRAE"]
    explainer.save(folder / "srae.pcx")
    images = ctx.test.image(slice(0, 4))
    explanation = explainer.explain(images)
    ctx.save_explanation("srae", explainer, "cw-vgg", images, explanation)
    for i in range(len(images)):
        fig = explanation.plot(i, image=images[i], k=explainer.n_features)
        fig.savefig(folder / f"x_features_{i}.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    print(table)
    srae = results["SRAE"]
    return {
        "table": str(folder / "table.md"),
        "srae_f_reg_test": round(srae["F_reg Testing"], 4),
        "srae_f_cls_test": round(srae["F_cls Testing"], 4),
        "srae_locality": round(srae["Locality Positive"], 4),
        "srae_gt_share": round(srae["GT share Positive"], 4),
        "excitation_bp_locality": round(results["ExcitationBP"]["Locality Positive"], 4),
        "lasso_selected_features": round(results["Lasso"]["selected features"], 1),
    }
