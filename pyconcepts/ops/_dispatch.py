"""Backend selection: the one rule every op uses to pick cuda, cpu or the reference twin.

On CUDA tensors the automatic choice (:func:`automatic_cuda`) is the torch twin while its
temporaries fit. The rewritten CUDA kernels of issue 18 (triplet mining with all anchors in
parallel; concept maps on cuBLAS with our epilogues and chunked statistics) exist and agree with
the CPU kernels in tests, but are not measured on a GPU yet: they run when asked for
(``backend="cuda"``) and where they already were the fallback (map statistics beyond the twin's
memory share), never instead of a twin that fits.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

from pyconcepts import _backends

Backend = Literal["cuda", "cpu", "reference"]
_COMPILED_DTYPES = (torch.float32, torch.float64)


def resolve_backend(tensor: torch.Tensor, backend: Optional[str] = None) -> Backend:
    """Pick the backend for an op whose main input is ``tensor``.

    Default: ``cuda`` when the tensor is on a CUDA device and ``_core_cuda`` loaded, ``cpu`` for
    float32/float64 CPU tensors when ``_core`` loaded, else ``reference`` (pure torch). An
    explicit ``backend`` is honoured or refused with a clear error, never silently replaced.
    """
    if backend is not None:
        if backend not in ("cuda", "cpu", "reference"):
            raise ValueError(
                f"backend: expected one of 'cuda', 'cpu', 'reference' or None, got {backend!r}"
            )
        if backend == "cpu":
            if tensor.device.type != "cpu":
                raise ValueError(f"backend='cpu' needs CPU tensors, got device {tensor.device}")
            if _backends.core() is None:
                raise RuntimeError(f"backend='cpu' is not available: {_backends.backends()['cpu']}")
        if backend == "cuda":
            if tensor.device.type != "cuda":
                raise ValueError(f"backend='cuda' needs CUDA tensors, got device {tensor.device}")
            if _backends.core_cuda() is None:
                raise RuntimeError(
                    f"backend='cuda' is not available: {_backends.backends()['cuda']}"
                )
        if backend != "reference" and tensor.dtype not in _COMPILED_DTYPES:
            raise TypeError(
                f"backend={backend!r} supports float32 and float64, got {tensor.dtype}; "
                "use backend='reference' for other dtypes"
            )
        return backend  # type: ignore[return-value]
    if tensor.dtype not in _COMPILED_DTYPES:
        return "reference"
    if tensor.device.type == "cuda" and _backends.core_cuda() is not None:
        return "cuda"
    if tensor.device.type == "cpu" and _backends.core() is not None:
        return "cpu"
    return "reference"


# ---- the automatic choice on CUDA tensors ------------------------------------------------------
# Measured on an H200 (docs/benchmarks.md, "CUDA kernels"): our former CUDA concept-map GEMM ran at
# 0.30-0.80x cuDNN's conv+relu and our former CUDA triplet miner at 1/20 of the torch twin
# (N = 4096) and below our own CPU kernel (N = 16384). Both have been replaced (issue 18): the
# triplet kernel mines all anchors in parallel (csrc/cuda/triplet.cu) and concept maps use cuBLAS
# through torch.matmul with our epilogue and chunked statistics (csrc/cuda/concept_maps.cu). The
# new kernels are NOT measured on a GPU yet (docs/benchmarks.md, "To measure on a GPU"), so the
# rule is unchanged: a call with ``backend=None`` on CUDA tensors takes the twin while its
# temporaries fit in this share of the free device memory, and the op's own fallback beyond
# (``backend="cuda"`` forces ours). Switch only with measured tables that show ours faster.
TWIN_MEMORY_SHARE = 0.25

AutoCuda = Literal["cuda", "reference", "host"]


def cuda_default(twin_bytes: int, free_bytes: int, fallback: AutoCuda) -> AutoCuda:
    """``"reference"`` when the torch twin's ``twin_bytes`` of temporaries fit in
    :data:`TWIN_MEMORY_SHARE` of ``free_bytes``, else ``fallback`` (``"cuda"``: our kernel;
    ``"host"``: our CPU kernel on a host copy)."""
    return "reference" if twin_bytes <= TWIN_MEMORY_SHARE * free_bytes else fallback


def automatic_cuda(tensor: torch.Tensor, twin_bytes: int, fallback: AutoCuda) -> AutoCuda:
    """:func:`cuda_default` with the free memory of ``tensor``'s device; a ``"host"`` fallback
    needs the CPU module (else our CUDA kernel)."""
    free, _ = torch.cuda.mem_get_info(tensor.device)
    if fallback == "host" and _backends.core() is None:
        fallback = "cuda"
    return cuda_default(twin_bytes, int(free), fallback)
