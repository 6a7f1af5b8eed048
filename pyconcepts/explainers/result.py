"""Explanation: the one result type of every explainer (self-describing, saveable, plottable)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from pyconcepts.persistence import save_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Explanation:
    """Per-image concept explanations of a batch.

    Attributes:
        method: the explainer that produced it (``"mace"``, ``"ibd"``, …).
        layer: the model layer the explanation is computed at.
        concept_names: names of the C concepts (columns of ``concept_scores``).
        concept_scores: ``[B, C]`` how much each concept supports the explained class.
        logits: ``[B, n_classes]`` the model's output for the batch.
        targets: ``[B]`` the class explained for each image (the prediction by default).
        class_names: names of the model's classes.
        heatmaps: ``[B, C, H, W]`` non-negative maps at input resolution of the explained class's
            concepts of each image, where the method has them.
        heatmap_concepts: ``[B, C]`` int64, the index in ``concept_names`` of each heatmap
            column (−1: unused column); None when column j is concept j.
        class_maps: ``[B, H, W]`` one combined non-negative map per image, where the method has
            one (see :meth:`class_map`).
        extras: method-specific tensors (documented by each explainer).
    """

    method: str
    layer: str
    concept_names: list[str]
    concept_scores: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    class_names: list[str]
    heatmaps: Optional[torch.Tensor] = None
    heatmap_concepts: Optional[torch.Tensor] = None
    class_maps: Optional[torch.Tensor] = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.concept_scores.shape[0]
        if self.concept_scores.shape[1:] != (len(self.concept_names),):
            raise ValueError(
                f"concept_scores: expected [B, {len(self.concept_names)}], "
                f"got {tuple(self.concept_scores.shape)}"
            )
        for name in ("logits", "targets"):
            if getattr(self, name).shape[0] != b:
                raise ValueError(f"{name}: expected {b} rows, got {getattr(self, name).shape[0]}")
        if self.heatmaps is not None and self.heatmaps.shape[:1] != (b,):
            raise ValueError(f"heatmaps: expected {b} rows, got {tuple(self.heatmaps.shape)}")

    def class_map(self, index: int) -> Optional[torch.Tensor]:
        """One ``[H, W]`` map of why image ``index`` is its class: ``class_maps[index]`` where the
        method gives one, else its heatmaps summed with weights = the positive part of their
        concepts' scores, else None."""
        if self.class_maps is not None:
            return self.class_maps[index]
        if self.heatmaps is None:
            return None
        maps = self.heatmaps[index]
        if self.heatmap_concepts is not None:
            ids = self.heatmap_concepts[index]
            scores = self.concept_scores[index][ids.clamp(min=0)] * (ids >= 0)
        else:
            scores = self.concept_scores[index][: maps.shape[0]]
        weights = scores.clamp(min=0).to(maps.dtype)
        return (weights[:, None, None] * maps[: weights.shape[0]]).sum(0)

    def __len__(self) -> int:
        return int(self.concept_scores.shape[0])

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)

    def top_concepts(self, index: int = 0, k: int = 5) -> list[tuple[str, float]]:
        """The k highest-scoring concepts of image ``index`` as (name, score)."""
        scores = self.concept_scores[index]
        k = min(k, scores.numel())
        values, ids = scores.topk(k)
        return [(self.concept_names[int(i)], float(v)) for v, i in zip(values, ids)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary: metadata, targets and top concepts per image."""
        return {
            "method": self.method,
            "layer": self.layer,
            "concept_names": list(self.concept_names),
            "class_names": list(self.class_names),
            "targets": [int(t) for t in self.targets],
            "predictions": [int(p) for p in self.predictions],
            "top_concepts": [self.top_concepts(i) for i in range(len(self))],
        }

    def save(self, folder: str | Path, pngs: int = 4) -> Path:
        """Write ``explanation.safetensors`` (all tensors + manifest), ``manifest.json`` and
        PNG plots of the first ``pngs`` images into ``folder``."""
        from pyconcepts import __version__

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            "concept_scores": self.concept_scores,
            "logits": self.logits,
            "targets": self.targets,
            **{
                name: value
                for name in ("heatmaps", "heatmap_concepts", "class_maps")
                if (value := getattr(self, name)) is not None
            },
            **{f"extras.{k}": v for k, v in self.extras.items()},
        }
        manifest = {**self.to_dict(), "pyconcepts_version": __version__}
        save_file(out / "explanation.safetensors", tensors, "explanation", {"manifest": manifest})
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for i in range(min(pngs, len(self))):
            fig = self.plot(i)
            fig.savefig(out / f"image_{i}.png", dpi=90, bbox_inches="tight")
            _close(fig)
        return out

    def plot(self, index: int = 0, image: Optional[torch.Tensor] = None, k: int = 4) -> Figure:
        """Bar chart of the top-k concepts of image ``index``, with their heatmaps (over the
        image when given) where the method has them."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        top = self.top_concepts(index, k)
        has_maps = self.heatmaps is not None and self.heatmaps.shape[1] == len(self.concept_names)
        n_cols = 1 + (len(top) if has_maps else 0)
        fig, axes = plt.subplots(1, n_cols, figsize=(3.2 * n_cols, 3.0), squeeze=False)
        ax = axes[0, 0]
        ax.barh([n for n, _ in reversed(top)], [s for _, s in reversed(top)], color="tab:blue")
        target = int(self.targets[index])
        ax.set_title(f"{self.method}: {self.class_names[target]}", fontsize=9)
        ax.tick_params(labelsize=7)
        if has_maps:
            assert self.heatmaps is not None
            for j, (name, score) in enumerate(top, start=1):
                cid = self.concept_names.index(name)
                a = axes[0, j]
                if image is not None:
                    a.imshow(image.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy())
                a.imshow(self.heatmaps[index, cid].detach().cpu().numpy(), cmap="jet", alpha=0.5)
                a.set_title(f"{name}\n{score:.3g}", fontsize=8)
                a.axis("off")
        fig.tight_layout()
        return fig


def _close(fig: Figure) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
