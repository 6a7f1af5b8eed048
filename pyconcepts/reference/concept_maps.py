"""Pure-torch twins of :mod:`pyconcepts.ops.concept_maps` (same names and signatures).

Standard ONNX ops only (Conv with a 1x1 kernel, Relu, ReduceMax, ReduceMean, Greater, Cast), so an
explainer head built on them exports with ``torch.onnx.export``.
"""

from __future__ import annotations

from typing import Optional

import torch

from pyconcepts.opspec.concept_maps import ConceptMapStats


def concept_maps(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``relu(conv1x1(x, weight, bias))``: x ``[B,D,H,W]``, weight ``[M,D]`` → ``[B,M,H,W]``."""
    return torch.relu(torch.nn.functional.conv2d(x, weight[:, :, None, None], bias))


def concept_map_stats(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    threshold: float = 0.0,
) -> ConceptMapStats:
    """Max, mean and fraction of positions ``> threshold`` of each concept map, each ``[B,M]``.

    This twin materialises ``[B,M,H,W]``; the compiled op does not.
    """
    maps = concept_maps(x, weight, bias)
    return ConceptMapStats(
        max=maps.amax(dim=(2, 3)),
        mean=maps.mean(dim=(2, 3)),
        frac_above=(maps > threshold).to(maps.dtype).mean(dim=(2, 3)),
    )


def stats_chunk(
    z: torch.Tensor,
    bias: Optional[torch.Tensor],
    threshold: float,
    run_max: torch.Tensor,
    run_sum: torch.Tensor,
    run_count: torch.Tensor,
) -> None:
    """Twin of the CUDA chunk reduction: folds ``v = relu(z + bias)`` of pre-activations
    ``z [b, M, p]`` into the running ``[b, M]`` max (starting from 0, as every ``v >= 0``; a
    NaN never wins it, the NaN sum marks the map instead), sum and count of ``v > threshold``,
    in place."""
    v = torch.relu(z if bias is None else z + bias[:, None])
    run_max.copy_(torch.maximum(run_max, torch.where(torch.isnan(v), 0.0, v).amax(2)))
    run_sum.add_(v.sum(2))
    run_count.add_((v > threshold).to(v.dtype).sum(2))


def bias_relu(z: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor) -> None:
    """Twin of the CUDA epilogue: ``out = relu(z + bias)`` for pre-activations ``z [B, M, P]``
    of any strides, written into the contiguous ``out`` (which may be ``z`` itself)."""
    out.copy_(torch.relu(z if bias is None else z + bias[:, None]))
