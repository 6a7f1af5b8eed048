"""Building blocks of the one explanation layout (see :class:`pyconcepts.explanation.Explanation`).

Every explainer computes its outputs in one module that takes ``(images, targets)`` — the same
module the ONNX export traces with ``targets`` = the prediction — so the torch and ONNX paths
give the same fields by construction. These helpers use only standard ONNX operators.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch


def resolve_targets(
    targets: Any, batch: int, n_classes: int, name: str = "targets"
) -> Optional[torch.Tensor]:
    """Validated class ids ``[batch]`` (int64, CPU) from ids in a list or tensor; None stays
    None (the explainer then explains each image's prediction)."""
    if targets is None:
        return None
    t = torch.as_tensor(targets)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class ids, got dtype {t.dtype}")
    t = t.detach().cpu().long().view(-1)
    if t.shape[0] != batch:
        raise ValueError(f"{name}: expected {batch} class ids (one per image), got {t.shape[0]}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(f"{name}: expected class ids in [0, {n_classes}), got {t.tolist()}")
    return t


def explained_classes(
    classes: Optional[Sequence[int]], n_classes: int, present: Optional[torch.Tensor] = None
) -> list[int]:
    """The validated ``classes`` argument of an explainer: distinct ids in [0, n_classes), in
    the given order; None means the classes ``present`` in the fit data (its labels, or the
    model's predictions), so a 1,000-class model costs only the classes one has images of."""
    if classes is None:
        return sorted(set(present.tolist())) if present is not None else list(range(n_classes))
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise TypeError(f"classes: expected a sequence of class ids, got {type(classes).__name__}")
    ids = [int(c) for c in classes]
    if not ids or len(set(ids)) != len(ids) or not all(0 <= c < n_classes for c in ids):
        raise ValueError(
            f"classes: expected distinct class ids in [0, {n_classes}), got {list(classes)!r}"
        )
    return ids


def warn_unexplained(targets: torch.Tensor, classes: Sequence[int]) -> None:
    """Warn about images whose target is not among the explained ``classes`` (their scores and
    maps are zero)."""
    known = torch.as_tensor(list(classes), dtype=torch.long)
    missing = (~(targets.cpu()[:, None] == known[None]).any(1)).nonzero().flatten().tolist()
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        warnings.warn(
            f"{len(missing)} of {len(targets)} images ({shown}) are explained for classes this "
            f"explainer was not fitted on (fitted: {list(classes)[:20]}): their scores and "
            "heatmaps are zero",
            stacklevel=3,
        )


def target_rows(targets: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``hit [B, K]`` (target == explained class k) and each image's row among the K explained
    ``classes`` ``[B]`` (0 where its target is not explained: ``hit.any(1)`` tells)."""
    hit = targets[:, None] == classes[None, :]
    rows = (hit.long() * torch.arange(classes.shape[0], device=hit.device)[None]).sum(1)
    return hit, rows


def concept_columns(rows: torch.Tensor, width: int, keep: torch.Tensor) -> torch.Tensor:
    """``[B, width]`` concept indices of each image's row when the concepts of class row r are
    ``r·width … r·width + width − 1``; −1 where ``keep`` (broadcast to ``[B, width]``) is
    False."""
    columns = rows[:, None] * width + torch.arange(width, device=rows.device)[None]
    return torch.where(keep, columns, torch.full_like(columns, -1))


def class_table(groups: Sequence[Sequence[int]], width: Optional[int] = None) -> torch.Tensor:
    """``[K, C]`` int64: row k lists class k's concept indices, padded with −1 to ``width``
    (default: the longest group; at least 1 column)."""
    c = max([width or 0, 1, *(len(g) for g in groups)])
    table = torch.full((len(groups), c), -1, dtype=torch.long)
    for k, g in enumerate(groups):
        table[k, : len(g)] = torch.as_tensor(list(g), dtype=torch.long)
    return table


def select_columns(maps: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``maps [B, N, h, w]`` at ``columns [B, C]`` → ``[B, C, h, w]``; −1 columns give zero
    maps. (A one-hot contraction, so the ONNX graph needs no per-row gather.)"""
    n = maps.shape[1]
    ids = torch.arange(n, device=maps.device)
    pick = (columns[:, :, None] == ids[None, None, :]).to(maps.dtype)
    return torch.einsum("bcn,bnhw->bchw", pick, maps)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``[B, C, h, w]`` maps to the input's ``size`` (``images.shape[-2:]``):
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` written as the two small matrix
    products it is (rows, then columns), equal to it up to rounding and 4–7× faster on CPU for
    the maps of a batch (an ONNX MatMul pair with constant weights)."""
    rows, cols = (
        resize_matrix(n_in, int(n_out), maps) for n_in, n_out in zip(maps.shape[-2:], size)
    )
    return torch.matmul(rows, torch.matmul(maps, cols.t()))


def scaled_to_peak(maps: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` non-negative maps, each divided by its maximum (floored at 1e-12, so an
    all-zero map stays 0): maps of different kinds on one scale before they are mixed."""
    return maps / maps.amax((-2, -1), keepdim=True).clamp_min(1e-12)


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[..., H, W]`` maps blurred by a Gaussian of standard deviation ``sigma`` pixels
    (truncated at 3σ, edges padded by repeating the border pixel), written as two small matrix
    products like :func:`upsample` (an ONNX MatMul pair with constant weights); ``sigma <= 0``
    returns the maps as they are."""
    if sigma <= 0:
        return maps
    rows, cols = (
        torch.tensor(_gaussian_weights(int(n), float(sigma)), dtype=maps.dtype, device=maps.device)
        for n in maps.shape[-2:]
    )
    return torch.matmul(rows, torch.matmul(maps, cols.t()))


@functools.lru_cache(maxsize=64)
def _gaussian_weights(n: int, sigma: float) -> tuple[tuple[float, ...], ...]:
    radius = math.ceil(3 * sigma)
    taps = [math.exp(-(d * d) / (2 * sigma * sigma)) for d in range(-radius, radius + 1)]
    total = sum(taps)
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for d, tap in zip(range(-radius, radius + 1), taps):
            out[i][min(n - 1, max(0, i + d))] += tap / total
    return tuple(tuple(row) for row in out)


def resize_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``[n_out, n_in]``: the 1-D bilinear resize ``n_in → n_out`` (``align_corners=False``) as
    a matrix in ``like``'s dtype and device."""
    return torch.tensor(_bilinear_weights(n_in, n_out), dtype=like.dtype, device=like.device)


@functools.lru_cache(maxsize=64)
def _bilinear_weights(n_in: int, n_out: int) -> tuple[tuple[float, ...], ...]:
    """``[n_out][n_in]``: the weights of 1-D linear interpolation from ``n_in`` to ``n_out``
    samples with half-pixel centres and edge clamping (the rule of ``align_corners=False``).
    Plain numbers, so that an ONNX export records them as a constant."""
    weights = [[0.0] * n_in for _ in range(n_out)]
    scale = n_in / n_out
    for i, row in enumerate(weights):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        low = min(int(src), n_in - 1)
        frac = src - low
        row[low] += 1.0 - frac
        row[min(low + 1, n_in - 1)] += frac
    return tuple(tuple(row) for row in weights)
