"""Demo step: the fused concept-map kernel on real features — a random concept head over
``cw-vgg``'s last conv layer, checked against the reference twin, with a picture of the maps."""

from __future__ import annotations

import time
from typing import Any

import torch

from pyconcepts import backends
from pyconcepts.demo import DemoContext
from pyconcepts.models import FeatureExtractor
from pyconcepts.ops import concept_map_stats, concept_maps
from pyconcepts.reference import concept_maps as reference


def run(ctx: DemoContext) -> dict[str, Any]:
    model = ctx.model("cw-vgg")
    images = ctx.test.image(slice(0, 64))
    feats = FeatureExtractor(model, ["features.relu4"])(images)["features.relu4"]
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, feats.shape[1], generator=gen) / feats.shape[1] ** 0.5
    bias = torch.zeros(16)
    start = time.perf_counter()
    maps = concept_maps(feats, weight, bias)
    stats = concept_map_stats(feats, weight, bias, threshold=0.0)
    seconds = time.perf_counter() - start
    expected = reference.concept_maps(feats, weight, bias)
    error = float((maps - expected).abs().max())
    if error > 1e-4:
        raise RuntimeError(f"concept_maps disagrees with its reference twin by {error:.3g}")
    _plot(images[:4], maps[:4, :6], ctx.step_dir("concept_maps") / "maps.png")
    return {
        "backend": backends()["cpu"],
        "features": list(feats.shape),
        "maps": list(maps.shape),
        "max_abs_diff_vs_reference": error,
        "mean_active_fraction": round(float(stats.frac_above.mean()), 4),
        "kernel_seconds": round(seconds, 4),
    }


def _plot(images: torch.Tensor, maps: torch.Tensor, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, m = maps.shape[:2]
    fig, axes = plt.subplots(n, m + 1, figsize=(1.6 * (m + 1), 1.6 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i].permute(1, 2, 0).numpy())
        for j in range(m):
            axes[i, j + 1].imshow(maps[i, j].numpy(), cmap="viridis")
            if i == 0:
                axes[i, j + 1].set_title(f"map {j}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
