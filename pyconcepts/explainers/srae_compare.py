"""The SRAE paper's comparison table (its Tables 1 and 3) on the concept world.

SRAE and the baselines NN / SAE / CAE (the same grouped module with other losses, trained the
same way), Lasso on Z (scikit-learn, positives up-weighted like the others), the units of Z and
plain excitation backprop on ŷ, each scored with F_reg and F_cls (train and test), O1, O2 and
locality on positive test images, plus the concept-world ground truth (share of each map on one
defining concept of the class, and how many of the class's defining concepts some map finds).

Locality on the concept world is computed per concept kind (shapes, colours, textures: within
a kind the masks of the parts do not overlap) plus the context, and averaged over the kinds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import nn

from pyconcepts.attribution.excitation import excitation_backprop
from pyconcepts.data.concept_world import COLOURS, SHAPES, ConceptWorld
from pyconcepts.explainers.srae import SRAE, normalise_maps
from pyconcepts.explainers.srae_training import class_samples
from pyconcepts.metrics.srae import concept_concentration, f_cls, f_reg, locality, orthogonality

METHODS = ("SRAE", "NN", "SAE", "Lasso", "CAE", "Z", "ExcitationBP")
ROWS = (
    ("F_reg", "Training"), ("F_reg", "Testing"), ("F_cls", "Training"), ("F_cls", "Testing"),
    ("O1", "Positive"), ("O2", "Positive"), ("Locality", "Positive"),
    ("GT share", "Positive"), ("GT coverage", "Positive"),
)  # fmt: skip


def concept_world_locality(maps: torch.Tensor, concept_masks: torch.Tensor) -> float:
    """Mean over maps and over the three concept kinds of the locality entropy (nats); maps
    with no mass (e.g. a dead unit of Z) are left out."""
    kinds = (
        slice(0, len(SHAPES)),
        slice(len(SHAPES), len(SHAPES) + len(COLOURS)),
        slice(len(SHAPES) + len(COLOURS), concept_masks.shape[1]),
    )
    return float(torch.stack([locality(maps, concept_masks[:, k]) for k in kinds]).nanmean())


class _LassoExplainer:
    """Lasso on standardised Z per class; its x-features are the n largest |coef| units."""

    def __init__(self, model: nn.Module, layer: str, alpha: float, n_features: int) -> None:
        self.model, self.layer, self.alpha, self.n_features = model, layer, alpha, n_features

    def fit(self, z: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
            classes: Sequence[int]) -> _LassoExplainer:  # fmt: skip
        from sklearn.linear_model import Lasso

        self.mean, self.std = z.mean(0), z.std(0).clamp_min(1e-6)
        zs = ((z - self.mean) / self.std).double().numpy()
        _, weight = class_samples(labels, classes, None, None, None)
        self.models, self.units, self.n_selected = {}, {}, []
        for row, c in enumerate(classes):
            lasso = Lasso(alpha=self.alpha, max_iter=5000)
            lasso.fit(zs, logits[:, c].double().numpy(), sample_weight=weight[row].numpy())
            coef = torch.as_tensor(lasso.coef_)
            self.n_selected.append(int((coef != 0).sum()))
            k = max(1, min(self.n_features, self.n_selected[-1]))
            self.units[c] = coef.abs().topk(k).indices.tolist()
            self.models[c] = lasso
        return self

    def approximate(self, z: torch.Tensor, c: int) -> torch.Tensor:
        zs = ((z - self.mean) / self.std).double().numpy()
        return torch.as_tensor(self.models[c].predict(zs)).float()

    def heatmaps(self, images: torch.Tensor, c: int) -> torch.Tensor:
        maps = excitation_backprop(
            self.model, images, self.units[c], output_layer=self.layer, size=images.shape[-2:]
        )
        return normalise_maps(maps)


def compare(
    model: nn.Module,
    train: ConceptWorld,
    test: ConceptWorld,
    classes: Optional[Sequence[int]] = None,
    n_eval: int = 10,
    n_z_units: int = 16,
    lasso_alpha: float = 0.5,
    progress: bool = False,
    **srae_kwargs: Any,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Train every method on ``train`` and score it.

    Returns ``{method: {row: value}}`` (rows named ``"F_reg Training"`` …, see :data:`ROWS`)
    and the fitted explainers by method. ``n_eval`` positive test images per class get
    heatmaps; ``srae_kwargs`` go to every :class:`SRAE` (e.g. epochs, hidden)."""
    images_tr, labels_tr = train.tensors()
    images_te, labels_te = test.tensors()
    explainers: dict[str, Any] = {}
    for name in ("SRAE", "NN", "SAE", "CAE"):
        explainers[name] = SRAE(model, classes=classes, variant=name.lower(), **srae_kwargs).fit(
            (images_tr, labels_tr), progress=progress
        )
    ref = explainers["SRAE"]
    cls_list: list[int] = list(ref.classes_)
    z_tr, logits_tr, _, _ = ref.features((images_tr, labels_tr))
    z_te, logits_te, _, _ = ref.features((images_te, labels_te))
    lasso = _LassoExplainer(model, ref.layer_, lasso_alpha, ref.n_features)
    explainers["Lasso"] = lasso.fit(z_tr, logits_tr, labels_tr, cls_list)
    defining = test.class_concept_matrix()
    gen = torch.Generator().manual_seed(0)
    z_units = torch.randperm(z_tr.shape[1], generator=gen)[:n_z_units].tolist()

    acc: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}

    def add(method: str, row: str, value: float) -> None:
        acc[method].setdefault(row, []).append(value)

    for c in cls_list:
        pos = (labels_te == c).nonzero().flatten()[:n_eval]
        if pos.numel() == 0:
            continue
        imgs, masks = images_te[pos], test.concept_masks(pos)
        maps_by_method: dict[str, torch.Tensor] = {}
        for name in ("SRAE", "NN", "SAE", "CAE", "Lasso"):
            ex = explainers[name]
            for split, z, logits in (("Training", z_tr, logits_tr), ("Testing", z_te, logits_te)):
                if name == "Lasso":
                    approx = ex.approximate(z, c)
                else:
                    approx = ex.transform(z)[1][ex.classes_.index(c)]
                add(name, f"F_reg {split}", f_reg(approx, logits[:, c]))
                add(name, f"F_cls {split}", f_cls(logits, approx, c))
            maps_by_method[name] = ex.heatmaps(imgs, c)
        maps_by_method["ExcitationBP"] = normalise_maps(
            excitation_backprop(model, imgs, c, size=imgs.shape[-2:])
        )
        maps_by_method["Z"] = normalise_maps(
            excitation_backprop(model, imgs, z_units, output_layer=ref.layer_, size=imgs.shape[-2:])
        )
        for name, maps in maps_by_method.items():
            add(name, "Locality Positive", concept_world_locality(maps, masks))
            gt = concept_concentration(maps, masks, defining[c])
            add(name, "GT share Positive", gt["share"])
            add(name, "GT coverage Positive", gt["coverage"])
            if maps.shape[1] > 1 and name != "Z":
                o1, o2 = orthogonality(maps)
                add(name, "O1 Positive", o1)
                add(name, "O2 Positive", o2)
    result = {
        m: {row: float(torch.tensor(v).nanmean()) for row, v in rows.items()}
        for m, rows in acc.items()
    }
    result["Lasso"]["selected features"] = sum(lasso.n_selected) / len(lasso.n_selected)
    return result, explainers


def table_markdown(results: dict[str, dict[str, float]]) -> str:
    """The seed-style table: methods as columns, metric rows; "—" where a method has none."""
    methods = [m for m in METHODS if m in results]
    lines = [
        "| Metric | | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for metric, split in ROWS:
        cells = []
        for m in methods:
            value = results[m].get(f"{metric} {split}")
            if value is None or not math.isfinite(value):
                cells.append("—")
            elif metric == "F_cls":
                cells.append(f"{100 * value:.2f}%")
            else:
                cells.append(f"{value:.4f}")
        lines.append(f"| {metric} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
