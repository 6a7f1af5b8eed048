"""Metrics of Interpretable Basis Decomposition (Zhou et al. 2018) and its ground-truth scores.

* :func:`average_precision` — per-concept AP of the concept classifiers (the seed's Table 1
  reports their mean);
* :func:`residual_ratio` — ‖r_k‖ / ‖w_k‖ of each decomposed class vector (65.9 % on ResNet50);
* :func:`basis_ground_truth` — on data with known class definitions (the concept world): do the
  top concepts of each class's basis match the concepts that define the class?
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["average_precision", "basis_ground_truth", "residual_ratio"]


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of each column: ``scores [P, C]`` (higher = more likely), ``labels [P, C]`` bool.

    AP = mean over positives of the precision at their rank (ties share the precision of the
    whole tied block, as scikit-learn's ``average_precision_score``); NaN for a column
    without positives.
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(
            f"labels: expected the shape of scores [P, C] {tuple(scores.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for c in range(scores.shape[1]):
        y = labels[:, c].bool()
        n_pos = int(y.sum())
        if n_pos == 0:
            continue
        s = scores[:, c].double()
        order = torch.argsort(s, descending=True)
        s_sorted, y_sorted = s[order], y[order].double()
        tp = torch.cumsum(y_sorted, 0)
        # the end of each block of tied scores: precision/recall are taken there
        last = torch.ones_like(s_sorted, dtype=torch.bool)
        last[:-1] = s_sorted[1:] != s_sorted[:-1]
        idx = torch.nonzero(last).flatten()
        tp_b = tp[idx]
        precision = tp_b / (idx + 1).double()
        recall_gain = torch.diff(tp_b, prepend=torch.zeros(1, dtype=torch.float64)) / n_pos
        out[c] = float((precision * recall_gain).sum())
    return out


def residual_ratio(weights: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
    """``‖r_k‖ / ‖w_k‖`` per row (0 for a zero weight vector)."""
    norms = weights.double().norm(dim=1)
    return torch.where(norms > 0, residuals.double().norm(dim=1) / norms, torch.zeros_like(norms))


def basis_ground_truth(
    basis_indices: torch.Tensor,
    basis_coefs: torch.Tensor,
    defining: torch.Tensor,
    k: Optional[int] = None,
) -> dict[str, torch.Tensor]:
    """Score each class's basis against the concepts that define the class.

    Args:
        basis_indices: ``[K, T]`` concept ids of each class's basis.
        basis_coefs: ``[K, T]`` their non-negative coefficients.
        defining: bool ``[K, C]``, True where concept c defines class k.
        k: rank cut-off; None uses each class's number of defining concepts (R-precision).

    Returns ``precision_at_k [K]`` (fraction of the k largest-coefficient concepts that define
    the class; terms with coefficient 0 count as misses), ``recall [K]`` (fraction of the
    defining concepts found anywhere in the basis with a positive coefficient) and their means
    ``mean_precision_at_k`` and ``mean_recall``.
    """
    K, T = basis_indices.shape
    if defining.shape[0] != K:
        raise ValueError(f"defining: expected {K} rows (one per class), got {defining.shape[0]}")
    order = torch.argsort(basis_coefs.double(), dim=1, descending=True, stable=True)
    ranked = basis_indices.gather(1, order)
    ranked_pos = basis_coefs.gather(1, order) > 0
    hits = defining.gather(1, ranked) & ranked_pos  # [K, T]
    n_def = defining.sum(1)
    cut = n_def.clamp(min=1, max=T) if k is None else torch.full_like(n_def, min(k, T))
    within = torch.arange(T)[None, :] < cut[:, None]
    precision = (hits & within).sum(1).double() / cut.double()
    recall = torch.where(
        n_def > 0, hits.sum(1).double() / n_def.clamp(min=1).double(), torch.ones_like(precision)
    )
    return {
        "precision_at_k": precision,
        "recall": recall,
        "mean_precision_at_k": precision.mean(),
        "mean_recall": recall.mean(),
    }
