"""Metrics of explanation spaces (Qi et al., SRAE, Sec. 4.1) for any explainer with x-features.

* :func:`f_reg` / :func:`f_cls` — faithfulness of an approximation ȳ of one logit ŷ.
* :func:`orthogonality` — O1 = ‖P‖_F − √n and O2 = −log det P of the correlation matrix P of the
  x-features' attention maps over a data set (both 0 when the maps are uncorrelated).
* :func:`locality` — entropy of the average distribution of heatmap mass over parts/concepts
  (0 when every map falls on one part); works for any (heatmaps, part masks) pair.
* :func:`concept_concentration` — the concept-world ground-truth score: how much of each map
  falls on one of the concepts that define the explained class.
"""

from __future__ import annotations

import math

import torch


def f_reg(approximation: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute difference between ȳ and ŷ (same shape)."""
    if approximation.shape != target.shape:
        raise ValueError(
            f"approximation: expected the shape of target {tuple(target.shape)}, "
            f"got {tuple(approximation.shape)}"
        )
    return float((approximation - target).abs().mean())


def f_cls(logits: torch.Tensor, approximation: torch.Tensor, cls: int) -> float:
    """Fraction of examples whose predicted class is unchanged when logit ``cls`` of
    ``logits [M, C]`` is replaced by its approximation ``[M]``."""
    if logits.dim() != 2 or approximation.shape != logits.shape[:1]:
        raise ValueError(
            f"approximation: expected shape [{logits.shape[0]}] for logits "
            f"{tuple(logits.shape)}, got {tuple(approximation.shape)}"
        )
    replaced = logits.clone()
    replaced[:, cls] = approximation
    return float((replaced.argmax(1) == logits.argmax(1)).float().mean())


def correlation_matrix(heatmaps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """P = diag(C)^-½ C diag(C)^-½ of the covariance C between the n maps of ``heatmaps``
    ``[M, n, ...]`` taken as n vectors over all images and pixels. A constant map has no
    defined correlation: its row/column is set to the identity's."""
    n = heatmaps.shape[1]
    x = heatmaps.transpose(0, 1).reshape(n, -1).double()
    x = x - x.mean(1, keepdim=True)
    cov = x @ x.t() / max(x.shape[1] - 1, 1)
    var = cov.diagonal()
    ok = var > eps
    inv = torch.where(ok, var.clamp_min(eps).rsqrt(), torch.zeros_like(var))
    p = inv[:, None] * cov * inv[None, :]
    eye = torch.eye(n, dtype=p.dtype)
    both = ok[:, None] & ok[None, :]
    return torch.where(both, p, eye)


def orthogonality(heatmaps: torch.Tensor, ridge: float = 1e-6) -> tuple[float, float]:
    """(O1, O2) of the maps ``[M, n, ...]``. O2 uses P + ridge·I so that exactly collinear
    maps give a large finite value rather than inf."""
    if heatmaps.dim() < 2 or heatmaps.shape[1] < 1:
        raise ValueError(f"heatmaps: expected [M, n, ...], got {tuple(heatmaps.shape)}")
    p = correlation_matrix(heatmaps)
    n = p.shape[0]
    o1 = float(torch.linalg.matrix_norm(p)) - math.sqrt(n)
    o2 = -float(torch.linalg.slogdet(p + ridge * torch.eye(n, dtype=p.dtype))[1])
    return o1, o2


def _probabilities(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S = C / Σ C per image and map ``[M, n, H, W]`` and the number of images in which each map
    has any mass ``[n]`` (all-zero maps have no distribution and are left out of averages)."""
    h = heatmaps.double().clamp_min(0)
    total = h.flatten(2).sum(-1)
    s = torch.where(total[..., None, None] > 0, h / total[..., None, None].clamp_min(1e-300), 0.0)
    return s, (total > 0).sum(0).double()


def part_distribution(
    heatmaps: torch.Tensor, masks: torch.Tensor, context: bool = True
) -> torch.Tensor:
    """S̄ ``[n, P(+1)]``: per map, the image-averaged probability of each part.

    ``S = C / Σ C`` per image and map; a pixel's mass is shared equally by the parts whose masks
    cover it (masks may overlap or be soft), and mass on pixels of no part goes to a last
    *context* column when ``context`` (the paper's 16th part), else is dropped. heatmaps
    ``[M, n, H, W]``, masks ``[M, P, H, W]``. Images where a map is all zero are not averaged
    in; a map that is zero everywhere gets an all-zero row.
    """
    if heatmaps.dim() != 4 or masks.dim() != 4:
        raise ValueError(
            f"heatmaps, masks: expected [M,n,H,W] and [M,P,H,W], got {tuple(heatmaps.shape)} "
            f"and {tuple(masks.shape)}"
        )
    if heatmaps.shape[0] != masks.shape[0] or heatmaps.shape[2:] != masks.shape[2:]:
        raise ValueError(
            f"masks: expected [{heatmaps.shape[0]}, P, {heatmaps.shape[2]}, {heatmaps.shape[3]}], "
            f"got {tuple(masks.shape)}"
        )
    s, active = _probabilities(heatmaps)
    m = masks.double()
    cover = m.sum(1, keepdim=True)
    share = torch.where(cover > 0, m / cover.clamp_min(1e-300), torch.zeros_like(m))
    parts = torch.einsum("mnhw,mphw->mnp", s, share)
    if context:
        ctx = (s * (cover == 0).double()).flatten(2).sum(-1)
        parts = torch.cat([parts, ctx[..., None]], dim=-1)
    return parts.sum(0) / active.clamp_min(1.0)[:, None]


def locality(heatmaps: torch.Tensor, masks: torch.Tensor, context: bool = True) -> torch.Tensor:
    """Entropy H_n (nats) of each map's normalised part histogram S̄_n ``[n]``; NaN for a map
    with no mass anywhere (it has no locality)."""
    dist = part_distribution(heatmaps, masks, context)
    total = dist.sum(-1, keepdim=True)
    p = dist / total.clamp_min(1e-300)
    h = -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))).sum(-1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, math.nan))


def concept_concentration(
    heatmaps: torch.Tensor, concept_masks: torch.Tensor, defining: torch.Tensor
) -> dict[str, float]:
    """Ground truth: does each map concentrate on one defining concept of the class?

    heatmaps ``[M, n, H, W]``, concept masks ``[M, K, H, W]``, defining bool ``[K]``. For each
    map l and concept c, ``share[l, c]`` = average fraction of the map's mass on pixels
    carrying c. Returns ``share`` = mean over maps of max over defining concepts (1 = every map
    lies on one defining concept), ``chance`` = the same for uniform maps, and ``coverage`` =
    fraction of defining concepts that are some map's best one. All-zero maps are left out.
    """
    if defining.dtype != torch.bool or defining.shape != concept_masks.shape[1:2]:
        raise ValueError(
            f"defining: expected a bool tensor [{concept_masks.shape[1]}], got "
            f"{defining.dtype} {tuple(defining.shape)}"
        )
    if not bool(defining.any()):
        raise ValueError("defining: expected at least one defining concept")

    def shares(maps: torch.Tensor) -> torch.Tensor:
        s, active = _probabilities(maps)
        found = torch.einsum("mnhw,mkhw->nk", s, concept_masks.double())
        return (found / active.clamp_min(1.0)[:, None])[active > 0]

    share = shares(heatmaps)[:, defining]  # [n active, D]
    uniform = shares(torch.ones_like(heatmaps[:, :1]))[:, defining]
    if share.shape[0] == 0:
        return {"share": math.nan, "chance": float(uniform.max(1).values.mean()), "coverage": 0.0}
    best = share.argmax(1)
    return {
        "share": float(share.max(1).values.mean()),
        "chance": float(uniform.max(1).values.mean()),
        "coverage": float(best.unique().numel() / int(defining.sum())),
    }
