"""Concept maps: ``relu(conv1x1(x, weight, bias))`` and fused per-map statistics.

A concept vector ``weight[m]`` scores every spatial position of a feature map ``x``; the
positive part is the concept map (as in Net2Vec / IBD / MACE-style heads). On the CPU backend
this is one GEMM per call with bias and ReLU fused in the epilogue; the backward pass reuses the
saved output as the ReLU mask and sums the bias gradient while packing.

On the CUDA backend the products are cuBLAS GEMMs (``torch.matmul``) and our kernels
(``csrc/cuda/concept_maps.cu``) add what cuBLAS lacks: the bias + ReLU epilogue in one pass, and
for :func:`concept_map_stats` a reduction of each chunk of pre-activations as soon as it is
multiplied, so ``[B, M, H, W]`` is never stored. Backward: the output's ReLU mask, then
``torch.matmul`` again.

Precision on CUDA: ``precision="fp32"`` (default) runs float32 products in full fp32 (TF32 off
for cuBLAS and cuDNN during the call); ``"tf32"`` allows TF32 tensor cores (10-bit mantissa
inputs, fp32 accumulation; faster, about 1e-3 relative error). Both apply to whichever CUDA
path is taken (ours or the torch twin); float64 and the CPU backends are unaffected.

NaN: no finiteness check is made (it would cost a pass over ``x``). A NaN in ``x``, ``weight`` or
``bias`` makes the affected pre-activations NaN, which stay NaN after the ReLU (as
``torch.relu``); their gradient passes through as in torch. In :func:`concept_map_stats` a map
holding a NaN gets NaN max and mean, and a NaN never counts as above the threshold.

On CUDA tensors the automatic backend is the torch twin (cuDNN's conv + relu), measured faster
than our previous CUDA GEMM on an H200; for :func:`concept_map_stats` only while the
``[B, M, H, W]`` maps it materialises fit in a quarter of the free device memory, beyond which
our O(B·M)-memory path is taken (``pyconcepts.ops._dispatch``). The cuBLAS-based CUDA path is
not measured yet; ``backend="cuda"`` forces it.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch

from pyconcepts.ops import _bridge
from pyconcepts.ops._dispatch import automatic_cuda, resolve_backend
from pyconcepts.opspec import checks as _checks
from pyconcepts.opspec.concept_maps import ConceptMapStats
from pyconcepts.reference import concept_maps as _reference

__all__ = ["ConceptMapStats", "concept_map_stats", "concept_maps"]

PRECISIONS = ("fp32", "tf32")

# Bytes of pre-activations multiplied at a time by the CUDA statistics: the only memory beyond
# the [B, M] results (a chunk of whole images, or of positions of one image when an image's maps
# alone are larger).
STATS_CHUNK_BYTES = 16 * 2**20


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


def _check_precision(precision: object) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming it."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision: expected 'fp32' or 'tf32', got {precision!r}")
    return precision


@contextlib.contextmanager
def _cuda_precision(precision: str) -> Iterator[None]:
    """cuBLAS matmuls and cuDNN convolutions of float32 in TF32 (``"tf32"``) or full fp32
    (``"fp32"``) for the duration, then the caller's settings again. These are process-wide
    torch flags: float32 CUDA work of another thread meanwhile sees them too."""
    mode = "tf32" if precision == "tf32" else "ieee"
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9: per-backend API
        flags: list[tuple[Any, str, object]] = [
            (matmul, "fp32_precision", mode),
            (conv, "fp32_precision", mode),
        ]
    else:
        flags = [
            (matmul, "allow_tf32", mode == "tf32"),
            (torch.backends.cudnn, "allow_tf32", mode == "tf32"),
        ]
    saved = [getattr(owner, name) for owner, name, _ in flags]
    try:
        for owner, name, value in flags:
            setattr(owner, name, value)
        yield
    finally:
        for (owner, name, _), value in zip(flags, saved):
            setattr(owner, name, value)


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
    """The CPU kernels: fused GEMM + bias + ReLU, and its backward."""

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


# epilogue(z [B, M, P] (any strides), bias [M] or None, out [B, M, P] contiguous, may be z):
# out = relu(z + bias) (the CUDA kernel, or the torch twin ``reference.concept_maps.bias_relu``,
# which tests this path's layout handling and backward without a GPU).
Epilogue = Callable[[torch.Tensor, Optional[torch.Tensor], torch.Tensor], None]


def _cuda_bias_relu(z: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor) -> None:
    _bridge.call(
        "concept_maps_bias_relu",
        _bridge.strided_ptr(z), *z.stride(), None if bias is None else _bridge.dense(bias),
        out, *z.shape, dtype=z.dtype, device=z.device,
    )  # fmt: skip


class _ConceptMapsCuda(torch.autograd.Function):
    """cuBLAS products (``torch.matmul``) with our bias + ReLU epilogue; backward through
    ``torch.matmul`` with the output's ReLU mask."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
        precision: str, epilogue: Epilogue,
    ) -> torch.Tensor:  # fmt: skip
        batch, channels, height, width = x.shape
        n_maps, n_positions = weight.shape[0], height * width
        xv = x.reshape(batch, channels, n_positions)
        with _cuda_precision(precision):
            z = torch.matmul(weight, xv)  # [B, M, P], possibly a transposed view
        out = z if z.is_contiguous() else torch.empty(z.shape, dtype=z.dtype, device=z.device)
        epilogue(z, bias, out)
        ctx.save_for_backward(xv, weight, out)
        ctx.x_shape = tuple(x.shape)
        ctx.precision = precision
        return out.view(batch, n_maps, height, width)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        xv, weight, out = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # torch's ReLU backward: zero where the output is <= 0 (a NaN output passes the gradient)
        g = grad_out.reshape(out.shape).masked_fill(out <= 0, 0)
        grad_x = grad_w = None
        with _cuda_precision(ctx.precision):
            if need_x:
                grad_x = torch.matmul(weight.T, g).reshape(ctx.x_shape)
            if need_w:
                grad_w = torch.einsum("bmp,bdp->md", g, xv)
        grad_b = g.sum((0, 2)) if need_b else None
        return grad_x, grad_w, grad_b, None, None


# reduce(z [b, M, p], bias, threshold, run_max, run_sum, run_count): folds one chunk of
# pre-activations into the running [b, M] statistics (the CUDA kernel, or the torch twin
# ``reference.concept_maps.stats_chunk``, which tests the chunking without a GPU).
ChunkReducer = Callable[
    [torch.Tensor, Optional[torch.Tensor], float, torch.Tensor, torch.Tensor, torch.Tensor], None
]


def _cuda_reduce(
    z: torch.Tensor, bias: Optional[torch.Tensor], threshold: float,
    run_max: torch.Tensor, run_sum: torch.Tensor, run_count: torch.Tensor,
) -> None:  # fmt: skip
    _bridge.call(
        "concept_map_stats_chunk",
        _bridge.strided_ptr(z), *z.stride(), bias, threshold, run_max, run_sum, run_count,
        *z.shape, dtype=z.dtype, device=z.device,
    )  # fmt: skip


def _chunked_stats(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], threshold: float,
    reduce: ChunkReducer,
) -> torch.Tensor:  # fmt: skip
    """``[3, B, M]`` max, mean, fraction above ``threshold``: matrix products of chunks of at
    most :data:`STATS_CHUNK_BYTES` (whole images when one fits, else runs of positions of one
    image), each folded into the running statistics by ``reduce`` before the next."""
    batch, channels, height, width = x.shape
    n_maps, n_positions = weight.shape[0], height * width
    xv = x.reshape(batch, channels, n_positions)
    bias = None if bias is None else _bridge.dense(bias)
    stats = torch.zeros((3, batch, n_maps), dtype=x.dtype, device=x.device)
    image_bytes = n_maps * n_positions * x.element_size()
    images = max(1, STATS_CHUNK_BYTES // image_bytes)
    positions = min(n_positions, max(1, STATS_CHUNK_BYTES // (n_maps * x.element_size())))
    for b0 in range(0, batch, images):
        b1 = min(batch, b0 + images)
        for p0 in range(0, n_positions, positions):
            z = torch.matmul(weight, xv[b0:b1, :, p0 : min(n_positions, p0 + positions)])
            reduce(z, bias, threshold, stats[0, b0:b1], stats[1, b0:b1], stats[2, b0:b1])
    # A sum of ReLU outputs is NaN only where the map holds a NaN: its max is NaN too.
    stats[0] = torch.where(torch.isnan(stats[1]), stats[1], stats[0])
    stats[1:] /= n_positions
    return stats


def _cuda_stats(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], threshold: float,
    precision: str,
) -> torch.Tensor:  # fmt: skip
    """:func:`_chunked_stats` with cuBLAS products and our reduction kernel."""
    with _cuda_precision(precision):
        return _chunked_stats(x, weight, bias, threshold, _cuda_reduce)


def _on_device(x: torch.Tensor, precision: str) -> contextlib.AbstractContextManager[None]:
    """:func:`_cuda_precision` for CUDA tensors (the torch twin's cuDNN conv included)."""
    return _cuda_precision(precision) if x.is_cuda else contextlib.nullcontext()


def concept_maps(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """``relu(conv1x1(x, weight) + bias)``: one non-negative map per concept vector.

    Args:
        x: features ``[B, D, H, W]``, float32 or float64 for the compiled backends (other float
            dtypes use the reference twin), any strides (NCHW and channels_last need no copy).
        weight: concept vectors ``[M, D]``.
        bias: ``[M]`` or None.
        backend: None (automatic), ``"cpu"``, ``"cuda"`` or ``"reference"``.
        precision: float32 arithmetic on CUDA, ``"fp32"`` (TF32 off) or ``"tf32"`` (module
            docstring); no effect elsewhere.

    Returns:
        ``[B, M, H, W]`` contiguous, differentiable in ``x``, ``weight`` and ``bias`` (once:
        no double backward on the compiled backends). ``B = 0`` or ``H*W = 0`` give an empty
        result (``D >= 1`` and ``M >= 1`` are required, as for ``conv2d``).

    Raises:
        ValueError: NaN or inf in ``weight`` or ``bias``, or in maps (NaN/inf in ``x``, or
            float overflow), or an unknown ``precision``. A ``-inf`` in ``x`` that the ReLU
            turns into 0 everywhere is not an error (the maps are exact); its gradient, as for
            ``conv2d``, is not finite.
    """
    x, weight, bias = _validate(x, weight, bias)
    precision = _check_precision(precision)
    which = resolve_backend(x, backend)
    if which == "reference" or (backend is None and which == "cuda"):  # module docstring
        with _on_device(x, precision):
            return _finite(_reference.concept_maps(x, weight, bias))
    out: torch.Tensor  # the compiled backend of x's device
    if x.is_cuda:
        out = _ConceptMapsCuda.apply(x, weight, bias, precision, _cuda_bias_relu)
    else:
        out = _ConceptMaps.apply(x, weight, bias)
    return _finite(out)


def concept_map_stats(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    threshold: float = 0.0,
    *,
    backend: Optional[str] = None,
    precision: str = "fp32",
) -> ConceptMapStats:
    """Per image and concept: max, mean and fraction of positions ``> threshold`` of the map.

    Equal to reducing :func:`concept_maps` over ``H, W``, but the compiled backends never store
    ``[B, M, H, W]``. On the CPU each register tile of the GEMM is reduced as soon as it is
    computed: the extra memory is the ``3 x [B, M]`` result plus a packed copy of ``weight`` and
    per-thread panel buffers independent of ``B``, ``H`` and ``W``. On CUDA the GEMM runs on
    chunks of at most :data:`STATS_CHUNK_BYTES` of pre-activations, each reduced before the next.

    Not differentiable on the compiled backends. When gradients are needed (grad mode on and an
    input requires grad) the call goes to the reference twin, which materialises the maps.

    Args:
        x, weight, bias, backend, precision: as :func:`concept_maps`; ``H*W`` must be at least 1.
        threshold: a map value counts as active when it is ``> threshold``.

    Returns:
        :class:`ConceptMapStats` ``(max, mean, frac_above)``, each ``[B, M]`` in ``x``'s dtype.
    """
    x, weight, bias = _validate(x, weight, bias)
    precision = _check_precision(precision)
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
        with _on_device(x, precision):
            result = _reference.concept_map_stats(x, weight, bias, float(threshold))
        _finite(torch.stack(tuple(result)))
        return result
    if x.is_cuda:  # the compiled backend of x's device
        stats = _cuda_stats(x, weight, bias, float(threshold), precision)
    else:
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
