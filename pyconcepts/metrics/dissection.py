"""Naming units by the concepts they fire on (network dissection, Bau et al. 2017): a unit's
maps over a concept data set, thresholded at a high quantile of its own values, are compared
with each concept's masks by intersection over union summed over the data set; the unit takes
the name of its best concept."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def unit_concept_iou(
    unit_maps: torch.Tensor, masks: torch.Tensor, quantile: float = 0.99
) -> torch.Tensor:
    """IoU ``[U, C]`` of each unit's thresholded maps ``[N, U, H, W]`` with each concept's
    masks ``[N, C, H, W]`` over the N images. A unit's threshold is the ``quantile`` of its
    values over all images and pixels (the dissection rule); a unit that is never positive
    overlaps nothing."""
    if unit_maps.dim() != 4 or masks.dim() != 4:
        raise ValueError(
            f"unit_maps, masks: expected [N, U, H, W] and [N, C, H, W], got "
            f"{tuple(unit_maps.shape)} and {tuple(masks.shape)}"
        )
    if unit_maps.shape[0] != masks.shape[0] or unit_maps.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"masks: expected {unit_maps.shape[0]} images of {tuple(unit_maps.shape[-2:])}, "
            f"got {tuple(masks.shape)}"
        )
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile: expected a value in (0, 1), got {quantile}")
    values = unit_maps.transpose(0, 1).flatten(1).float()  # [U, N·H·W]
    k = max(1, round((1 - quantile) * values.shape[1]))
    threshold = values.topk(k, dim=1).values[:, -1].clamp_min(torch.finfo(values.dtype).tiny)
    on = values >= threshold[:, None]  # [U, P]
    truth = masks.transpose(0, 1).flatten(1).bool()  # [C, P]
    inter = on.float() @ truth.float().t()  # [U, C]
    union = on.sum(1, keepdim=True).float() + truth.sum(1)[None].float() - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def name_units(
    unit_maps: torch.Tensor, masks: torch.Tensor, names: Sequence[str], quantile: float = 0.99
) -> list[tuple[str, float]]:
    """Each unit's best concept ``(name, IoU)`` (see :func:`unit_concept_iou`)."""
    if masks.shape[1] != len(names):
        raise ValueError(f"names: expected {masks.shape[1]} concept names, got {len(names)}")
    iou = unit_concept_iou(unit_maps, masks, quantile)
    best, idx = iou.max(1)
    return [(names[int(i)], float(v)) for v, i in zip(best, idx)]
