"""Explanation: the one result type of every explainer and of ONNX exports (self-describing,
saveable, plottable)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from pyconcepts.persistence import save_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Explanation:
    """Per-image concept explanations of a batch, in one layout for every method.

    Attributes:
        method: the explainer that produced it (``"mace"``, ``"ibd"``, …).
        layer: the model layer the explanation is computed at.
        concept_names: names of the N concepts the explainer knows (columns of
            ``concept_scores``; for class-specific methods, every class's concepts).
        concept_scores: ``[B, N]`` how much each concept supports the explained class of each
            image; 0 for concepts that do not belong to the explained class.
        logits: ``[B, n_classes]`` the model's output for the batch.
        targets: ``[B]`` the class id explained for each image (the prediction by default).
        class_names: names of the model's classes.
        heatmaps: ``[B, C, H, W]`` non-negative maps at input resolution of the explained
            class's concepts of each image, where the method has per-concept maps.
        heatmap_concepts: ``[B, C]`` int64, the ``concept_names`` index of each heatmap column
            (−1: an unused column, whose map is zero).
        class_maps: ``[B, H, W]`` non-negative, one combined map of the explained class per
            image (each method documents how it combines).
        extras: method-specific tensors, each with the batch as first axis (documented by each
            explainer; an ONNX export returns the same ones).
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
        if self.heatmaps is not None:
            if self.heatmaps.dim() != 4 or self.heatmaps.shape[0] != b:
                raise ValueError(
                    f"heatmaps: expected [{b}, C, H, W], got {tuple(self.heatmaps.shape)}"
                )
            ids = self.heatmap_concepts
            if ids is None or tuple(ids.shape) != tuple(self.heatmaps.shape[:2]):
                got = None if ids is None else tuple(ids.shape)
                raise ValueError(
                    f"heatmap_concepts: expected {tuple(self.heatmaps.shape[:2])}, got {got}"
                )
        if self.class_maps is not None and (
            self.class_maps.dim() != 3 or self.class_maps.shape[0] != b
        ):
            raise ValueError(
                f"class_maps: expected [{b}, H, W], got {tuple(self.class_maps.shape)}"
            )

    @classmethod
    def from_outputs(
        cls,
        method: str,
        layer: str,
        concept_names: Sequence[str],
        class_names: Sequence[str],
        outputs: dict[str, torch.Tensor],
        targets: torch.Tensor,
    ) -> Explanation:
        """An explanation from an explainer head's named outputs — ``logits``,
        ``concept_scores``, optionally ``heatmaps``, ``heatmap_concepts`` and ``class_maps``;
        every other output is an extra. The torch explainers and their ONNX exports both build
        their results here, so the two paths give the same fields."""
        out = dict(outputs)
        maps, ids, combined = (
            out.pop(k, None) for k in ("heatmaps", "heatmap_concepts", "class_maps")
        )
        logits, scores = out.pop("logits"), out.pop("concept_scores")
        return cls(
            method=method,
            layer=layer,
            concept_names=list(concept_names),
            concept_scores=scores,
            logits=logits,
            targets=targets,
            class_names=list(class_names),
            heatmaps=maps,
            heatmap_concepts=None if ids is None else ids.long(),
            class_maps=combined,
            extras=out,
        )

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

    def class_map(self, index: int = 0) -> Optional[torch.Tensor]:
        """One combined ``[H, W]`` map of image ``index``'s explained class: the method's own
        ``class_maps``, else its concept heatmaps weighted by their positive scores (a plain
        sum where no score is positive); None when the method has no maps."""
        if self.class_maps is not None:
            return self.class_maps[index]
        if self.heatmaps is None or self.heatmap_concepts is None:
            return None
        return combine_maps(
            self.heatmaps[index : index + 1],
            scores_of_columns(
                self.concept_scores[index : index + 1], self.heatmap_concepts[index : index + 1]
            ),
        )[0]

    def concept_map(self, index: int, concept: str | int) -> Optional[torch.Tensor]:
        """The ``[H, W]`` heatmap of ``concept`` (name or index) for image ``index``; None when
        the concept is not among that image's explained concepts or there are no maps."""
        cid = self.concept_names.index(concept) if isinstance(concept, str) else int(concept)
        if self.heatmaps is None or self.heatmap_concepts is None:
            return None
        cols = (self.heatmap_concepts[index] == cid).nonzero().flatten()
        return self.heatmaps[index, int(cols[0])] if len(cols) else None

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

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the explanation by name (``extras.<key>`` for extras)."""
        optional = {
            "heatmaps": self.heatmaps,
            "heatmap_concepts": self.heatmap_concepts,
            "class_maps": self.class_maps,
        }
        return {
            "concept_scores": self.concept_scores,
            "logits": self.logits,
            "targets": self.targets,
            **{k: v for k, v in optional.items() if v is not None},
            **{f"extras.{k}": v for k, v in self.extras.items()},
        }

    def save(self, folder: str | Path, pngs: int = 4) -> Path:
        """Write ``explanation.safetensors`` (all tensors + manifest), ``manifest.json`` and
        PNG plots of the first ``pngs`` images into ``folder``."""
        from pyconcepts import __version__

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        manifest = {**self.to_dict(), "pyconcepts_version": __version__}
        save_file(
            out / "explanation.safetensors", self.tensors(), "explanation", {"manifest": manifest}
        )
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for i in range(min(pngs, len(self))):
            fig = self.plot(i)
            fig.savefig(out / f"image_{i}.png", dpi=90, bbox_inches="tight")
            _close(fig)
        return out

    def plot(self, index: int = 0, image: Optional[torch.Tensor] = None, k: int = 4) -> Figure:
        """The top-k concepts of image ``index`` as bars, then its class map and the heatmaps
        of its k best-scoring concepts (over ``image`` when given; an image outside [0, 1],
        e.g. normalised, is rescaled to its own range for display)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        top = self.top_concepts(index, k)
        panels: list[tuple[str, torch.Tensor]] = []
        combined = self.class_map(index)
        target = self.class_names[int(self.targets[index])]
        if combined is not None:
            panels.append((target, combined))
        for name, score in top:
            hm = self.concept_map(index, name)
            if hm is not None:
                panels.append((f"{name}\n{score:.3g}", hm))
        fig, axes = plt.subplots(1, 1 + len(panels), figsize=(3.2 * (1 + len(panels)), 3.0),
                                 squeeze=False)  # fmt: skip
        ax = axes[0, 0]
        ax.barh([n for n, _ in reversed(top)], [s for _, s in reversed(top)], color="tab:blue")
        ax.set_title(f"{self.method}: {target}", fontsize=9)
        ax.tick_params(labelsize=7)
        shown = None if image is None else displayable(image)
        for a, (title, hm) in zip(axes[0, 1:], panels):
            if shown is not None:
                a.imshow(shown)
            a.imshow(hm.detach().float().cpu().numpy(), cmap="jet",
                     alpha=0.5 if shown is not None else 1.0)  # fmt: skip
            a.set_title(title, fontsize=8)
            a.axis("off")
        fig.tight_layout()
        return fig


def scores_of_columns(scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``scores [B, N]`` read at heatmap columns ``[B, C]`` (−1 columns score 0)."""
    picked = scores.gather(1, columns.clamp_min(0).to(torch.long))
    return torch.where(columns >= 0, picked, torch.zeros_like(picked))


def combine_maps(maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` maps → ``[B, H, W]``: summed with the positive part of ``weights
    [B, C]``; an image with no positive weight gets the plain sum of its maps."""
    w = weights.clamp_min(0).to(maps.dtype)
    has = (w.sum(1, keepdim=True) > 0).to(maps.dtype)
    w = has * w + (1 - has) * torch.ones_like(w)
    return torch.einsum("bc,bchw->bhw", w, maps)


def displayable(image: torch.Tensor) -> Any:
    """``[3, H, W]`` (or ``[1, H, W]``) image → an HxWx3 array in [0, 1] for imshow: as is
    when already in [0, 1], else rescaled to its own range (normalised model inputs)."""
    x = image.detach().float().cpu()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        x = (x - low) / max(high - low, 1e-12)
    return x.permute(1, 2, 0).numpy()


def _close(fig: Figure) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
