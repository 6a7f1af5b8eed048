"""Concept maps: ``relu(conv1x1(x, weight, bias))`` and fused per-map statistics.

A concept vector ``weight[m]`` scores every spatial position of a feature map ``x``; the
positive part is the concept map (as in Net2Vec / IBD / MACE-style heads). On the compiled
backends this is one GEMM per call with bias and ReLU fused in the epilogue; the backward pass
reuses the saved output as the ReLU mask and sums the bias gradient while packing.

NaN: no finiteness check is made (it would cost a pass over ``x``). A NaN in ``x``, ``weight`` or
``bias`` makes the affected pre-activations NaN, which stay NaN after the ReLU (as
``torch.relu``); their gradient passes through as in torch. In :func:`concept_map_stats` a map
holding a NaN gets NaN max and mean, and a NaN never counts as above the threshold.

On CUDA tensors the automatic backend is the torch twin (cuDNN's conv + relu), measured faster
than our CUDA GEMM on an H200; for :func:`concept_map_stats` only while the ``[B, M, H, W]`` maps
it materialises fit in a quarter of the free device memory, beyond which our kernel's O(B·M)
memory wins (``pyconcepts.ops._dispatch``). ``backend="cuda"`` forces our kernel.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import torch

from pyconcepts.ops import _bridge
from pyconcepts.ops._dispatch import automatic_cuda, resolve_backend
from pyconcepts.opspec import checks as _checks
from pyconcepts.opspec.concept_maps import ConceptMapStats
from pyconcepts.reference import concept_maps as _reference

__all__ = ["ConceptMapStats", "concept_map_stats", "concept_maps"]


def _validate(
    x: object, weight: object, bias: object
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    x = _checks.tensor("x", x)
    weight = _checks.tensor("weight", weight)
    _checks.ndim("x", x, 4, "[B, D, H, W]")
    _checks.ndim("weight", weight, 2, "[M, D]")
    _checks.floating("x", x)
    if x.shape[1] < 1:
        raise ValueError(f"x: expected at least one channel (D >= 1), got shape {tuple(x.shape)}")
    if weight.shape[0] < 1:
        raise ValueError(
            "weight: expected at least one concept vector (M >= 1), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight: expected shape [M, {x.shape[1]}] (D = x.shape[1]), got {tuple(weight.shape)}"
        )
    if bias is not None:
        bias = _checks.tensor("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"bias: expected shape [{weight.shape[0]}] (M = weight.shape[0]), "
                f"got {tuple(bias.shape)}"
            )
    _checks.same_device_dtype([("x", x), ("weight", weight), ("bias", bias)])
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return x, weight, bias


def _finite(result: torch.Tensor) -> torch.Tensor:
    """``result`` (maps or statistics, all ≥ 0 or NaN after the ReLU) if it is finite. NaN/inf
    in ``x`` (weight and bias are checked up front) reaches every map at its position, so one
    NaN-propagating max over the output finds it, cheaper than scanning the larger ``x``."""
    if result.numel() and not bool(torch.isfinite(result.amax())):
        raise ValueError("x: expected finite values, got NaN or inf (the concept maps are not)")
    return result


def _positions_view(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """``x`` and strides (batch, channel, position) with H and W merged into one position axis.

    NCHW, channels_last and any layout where W's stride times W equals H's stride need no copy;
    other layouts are made contiguous.
    """
    b_stride, d_stride, h_stride, w_stride = x.stride()
    height, width = x.shape[2], x.shape[3]
    if height == 1:
        return x, b_stride, d_stride, w_stride
    if width == 1 or h_stride == width * w_stride:
        return x, b_stride, d_stride, (h_stride if width == 1 else w_stride)
    x = x.contiguous()
    return x, x.stride(0), x.stride(1), x.stride(3)


class _ConceptMaps(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        batch, channels, height, width = x.shape
        n_maps = weight.shape[0]
        xv, sb, sd, sp = _positions_view(x)
        weight = _bridge.dense(weight)
        bias = None if bias is None else _bridge.dense(bias)
        out = torch.empty((batch, n_maps, height, width), dtype=x.dtype, device=x.device)
        _bridge.call(
            "concept_maps_forward",
            *(_bridge.strided_ptr(xv), sb, sd, sp, weight, bias, out),
            *(batch, channels, n_maps, height * width),
            dtype=x.dtype,
            device=x.device,
        )
        ctx.save_for_backward(xv, weight, out)
        ctx.strides = (sb, sd, sp)
        ctx.x_shape = tuple(x.shape)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        xv, weight, out = ctx.saved_tensors
        batch, channels, height, width = ctx.x_shape
        n_maps = weight.shape[0]
        need_x, need_w, need_b = ctx.needs_input_grad
        need_b = need_b and ctx.has_bias
        opts = {"dtype": out.dtype, "device": out.device}
        grad_x = torch.empty(ctx.x_shape, **opts) if need_x else None
        grad_w = torch.empty((n_maps, channels), **opts) if need_w else None
        grad_b = torch.empty((n_maps,), **opts) if need_b else None
        if need_x or need_w or need_b:
            _bridge.call(
                "concept_maps_backward",
                *(_bridge.strided_ptr(xv), *ctx.strides, weight, out, _bridge.dense(grad_out)),
                *(grad_x, grad_w, grad_b),
                *(batch, channels, n_maps, height * width),
                **opts,
            )
        return grad_x, grad_w, grad_b


def concept_maps(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``relu(conv1x1(x, weight) + bias)``: one non-negative map per concept vector.

    Args:
        x: features ``[B, D, H, W]``, float32 or float64 for the compiled backends (other float
            dtypes use the reference twin), any strides (NCHW and channels_last need no copy).
        weight: concept vectors ``[M, D]``.
        bias: ``[M]`` or None.
        backend: None (automatic), ``"cpu"``, ``"cuda"`` or ``"reference"``.

    Returns:
        ``[B, M, H, W]`` contiguous, differentiable in ``x``, ``weight`` and ``bias`` (once:
        no double backward on the compiled backends). ``B = 0`` or ``H*W = 0`` give an empty
        result (``D >= 1`` and ``M >= 1`` are required, as for ``conv2d``).

    Raises:
        ValueError: NaN or inf in ``weight`` or ``bias``, or in maps (NaN/inf in ``x``, or
            float overflow). A ``-inf`` in ``x`` that the ReLU turns into 0 everywhere is not an
            error (the maps are exact); its gradient, as for ``conv2d``, is not finite.
    """
    x, weight, bias = _validate(x, weight, bias)
    which = resolve_backend(x, backend)
    if which == "reference" or (backend is None and which == "cuda"):  # module docstring
        return _finite(_reference.concept_maps(x, weight, bias))
    out: torch.Tensor = _ConceptMaps.apply(x, weight, bias)
    return _finite(out)


def concept_map_stats(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    threshold: float = 0.0,
    *,
    backend: Optional[str] = None,
) -> ConceptMapStats:
    """Per image and concept: max, mean and fraction of positions ``> threshold`` of the map.

    Equal to reducing :func:`concept_maps` over ``H, W``, but the compiled backends never store
    ``[B, M, H, W]``: each register tile of the GEMM is reduced as soon as it is computed, so the
    extra memory is the ``3 x [B, M]`` result plus a packed copy of ``weight`` and per-thread
    panel buffers independent of ``B``, ``H`` and ``W``.

    Not differentiable on the compiled backends. When gradients are needed (grad mode on and an
    input requires grad) the call goes to the reference twin, which materialises the maps.

    Args:
        x, weight, bias, backend: as :func:`concept_maps`; ``H*W`` must be at least 1.
        threshold: a map value counts as active when it is ``> threshold``.

    Returns:
        :class:`ConceptMapStats` ``(max, mean, frac_above)``, each ``[B, M]`` in ``x``'s dtype.
    """
    x, weight, bias = _validate(x, weight, bias)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold: expected a real number, got {type(threshold).__name__}")
    batch, channels, height, width = x.shape
    if height * width == 0:
        raise ValueError(f"x: expected H*W >= 1 for statistics, got shape {tuple(x.shape)}")
    chosen: str = resolve_backend(x, backend)
    if backend is None and chosen == "cuda":  # the twin holds the maps and one temporary
        maps = batch * weight.shape[0] * height * width * x.element_size()
        chosen = automatic_cuda(x, 2 * maps, "cuda")
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    )
    if chosen == "reference" or wants_grad:
        result = _reference.concept_map_stats(x, weight, bias, float(threshold))
        _finite(torch.stack(tuple(result)))
        return result
    n_maps = weight.shape[0]
    xv, sb, sd, sp = _positions_view(x)
    stats = torch.empty((3, batch, n_maps), dtype=x.dtype, device=x.device)
    _bridge.call(
        "concept_map_stats",
        *(_bridge.strided_ptr(xv), sb, sd, sp, _bridge.dense(weight)),
        None if bias is None else _bridge.dense(bias),
        *(float(threshold), stats[0], stats[1], stats[2], batch, channels, n_maps),
        height * width,
        dtype=x.dtype,
        device=x.device,
    )
    _finite(stats)
    return ConceptMapStats(max=stats[0], mean=stats[1], frac_above=stats[2])
