"""Pure-torch twin of :mod:`pyconcepts.ops.triplet`: the FaceNet semi-hard rule, vectorised.

O(N²) memory (a handful of N×N matrices, never N×N×N): distances by the Gram-matrix formula,
each anchor's negative distances sorted once, and ``searchsorted`` finds for every pair the
closest negative strictly farther than the positive. Ties between negatives go to the lowest
index, as in the compiled kernels.
"""

from __future__ import annotations

import torch

from pyconcepts.opspec.triplet import num_positive_pairs, validate


def _squared_distances(emb: torch.Tensor) -> torch.Tensor:
    sq = (emb * emb).sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * (emb @ emb.T)).clamp_min(0.0)


def _mine(sqd: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    n = sqd.shape[0]
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(n, dtype=torch.bool, device=sqd.device)
    inf = torch.tensor(float("inf"), dtype=sqd.dtype, device=sqd.device)
    sorted_d, order = torch.sort(torch.where(same, inf, sqd), dim=1, stable=True)
    first_farther = torch.searchsorted(sorted_d, sqd.contiguous(), right=True)
    n_neg = (~same).sum(1, keepdim=True)
    farthest = torch.where(same, -inf, sqd).argmax(1, keepdim=True)  # first maximum
    closer = order.gather(1, first_farther.clamp_max(n - 1))
    negative = torch.where(first_farther < n_neg, closer, farthest)
    a, p = positive.nonzero(as_tuple=True)
    return a, p, negative[a, p]


def semihard_triplets(
    emb: torch.Tensor, labels: torch.Tensor, margin: float = 1.0, squared: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) index tensors, pairs ordered by anchor then positive."""
    emb, labels = validate(emb, labels, margin)
    a, p, n = _mine(_squared_distances(emb.detach()), labels)
    return a, p, n


def semihard_triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float = 1.0, squared: bool = True
) -> torch.Tensor:
    """Mean over ordered positive pairs of relu(d_ap − d_an + margin); 0 without pairs."""
    emb, labels = validate(emb, labels, margin)
    sqd = _squared_distances(emb)
    a, p, n = _mine(sqd.detach(), labels)
    d_ap, d_an = sqd[a, p], sqd[a, n]
    if not squared:  # gradient 0 where a distance is 0
        d_ap = torch.where(d_ap > 0, d_ap, 1.0).sqrt() * (d_ap > 0)
        d_an = torch.where(d_an > 0, d_an, 1.0).sqrt() * (d_an > 0)
    total = torch.relu(d_ap - d_an + margin).sum() + 0.0 * emb.sum()
    return total / num_positive_pairs(labels).clamp_min(1).to(emb.dtype)
