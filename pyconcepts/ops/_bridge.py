"""The only place that turns tensors into what the compiled core takes.

Compiled functions are named ``<op>_<f32|f64>`` in ``_core`` / ``_core_cuda`` and take raw
pointers (as integers), sizes, and on CUDA the current stream as a trailing integer. Tensors are
made contiguous here (the kernels assume row-major dense memory).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch

from pyconcepts import _backends

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

Arg = Union[torch.Tensor, int, float, bool, None]


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous tensor (no copy when it already is)."""
    return t if t.is_contiguous() else t.contiguous()


def ptr(t: torch.Tensor | None) -> int:
    """Address of a contiguous tensor's first element (0 for None)."""
    if t is None:
        return 0
    if not t.is_contiguous():
        raise ValueError("internal error: _bridge.ptr needs a contiguous tensor")
    return int(t.data_ptr())


def strided_ptr(t: torch.Tensor) -> int:
    """Address of ``t``'s first element for a kernel that reads ``t`` through strides it is given.

    For ops that accept several layouts without a copy (e.g. NCHW and channels_last); the caller
    passes the strides next to the pointer.
    """
    return int(t.data_ptr())


def kernel(op: str, dtype: torch.dtype, device: torch.device) -> Callable[..., Any]:
    """The compiled function for ``op`` at ``dtype`` on ``device``'s backend."""
    module = _backends.core_cuda() if device.type == "cuda" else _backends.core()
    if module is None:
        raise RuntimeError(f"no compiled backend for {device.type}: {_backends.backends()}")
    suffix = _SUFFIX.get(dtype, str(dtype).replace("torch.", ""))
    name = f"{op}_{suffix}" if dtype in _SUFFIX else op
    fn = getattr(module, name, None)
    if fn is None:
        raise RuntimeError(f"compiled module {module.__name__} has no function {name!r}")
    return fn


def call(op: str, *args: Arg, dtype: torch.dtype, device: torch.device) -> Any:
    """Call ``<op>_<suffix>`` with tensors converted to pointers; appends the CUDA stream.

    Tensors must already be contiguous (use :func:`dense`); outputs are passed in by the caller,
    allocated through torch so the caching allocator and streams are respected.
    """
    converted: list[Any] = [ptr(a) if isinstance(a, torch.Tensor) else a for a in args]
    converted = [0 if a is None else a for a in converted]
    if device.type == "cuda":
        converted.append(int(torch.cuda.current_stream(device).cuda_stream))
    return kernel(op, dtype, device)(*converted)
