"""Argument checks shared by the semi-hard triplet op and its reference twin."""

from __future__ import annotations

import math

import torch

from pyconcepts.opspec import checks as _checks


def validate(emb: object, labels: object, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks ``emb [N, Q]`` and ``labels [N]``; returns them with labels as int64.

    Errors: NaN/inf embeddings, fewer than 2 embeddings, labels of another length or device,
    non-integer labels, and a single label overall (no negatives exist).
    """
    emb = _checks.tensor("emb", emb)
    labels = _checks.tensor("labels", labels)
    _checks.ndim("emb", emb, 2, "[N, Q]")
    _checks.floating("emb", emb)
    _checks.ndim("labels", labels, 1, "[N]")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor, got dtype {labels.dtype}")
    if labels.shape[0] != emb.shape[0]:
        raise ValueError(
            f"labels: expected {emb.shape[0]} labels (one per row of emb), got {labels.shape[0]}"
        )
    if labels.device != emb.device:
        raise ValueError(f"labels: expected device {emb.device} (as emb), got {labels.device}")
    if emb.shape[0] < 2:
        raise ValueError(f"emb: expected at least 2 embeddings, got {emb.shape[0]}")
    if not math.isfinite(margin):
        raise ValueError(f"margin: expected a finite number, got {margin}")
    _checks.finite("emb", emb)
    labels = labels.to(torch.int64)
    if not bool((labels != labels[0]).any()):
        raise ValueError(
            "labels: expected at least 2 distinct labels (negatives must exist), "
            f"got only {int(labels[0])}"
        )
    return emb, labels


def num_positive_pairs(labels: torch.Tensor) -> torch.Tensor:
    """Ordered (a, p) pairs with a ≠ p and equal labels, as a 0-D int64 tensor."""
    counts = torch.unique(labels, return_counts=True)[1]
    return (counts * (counts - 1)).sum()


def anchor_offsets(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Start of each anchor's pairs in the pair list (anchors in order) and the total count."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    per_anchor = counts[inverse] - 1
    offsets = torch.cumsum(per_anchor, 0) - per_anchor
    return offsets, int(per_anchor.sum())
