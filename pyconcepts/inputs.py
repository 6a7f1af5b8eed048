"""The one rule for a batch of images given to an explainer, on the torch and the ONNX path.

``ConceptExplainer`` (torch) and ``OnnxExplainer`` (onnxruntime) both pass their input through
:func:`check_image_batch`, so the same input is accepted or refused the same way, with the same
message, whichever path explains it:

- a 4-D ``[B, C, H, W]`` batch of at least one image (onnxruntime's CPU kernels crash or fail
  obscurely on an empty batch, so it is refused before any graph runs);
- floating-point values of any precision, cast to the dtype that runs them: the model's
  parameter dtype on the torch path (see :func:`parameter_dtype`), float32 for an ONNX export;
- integer, boolean and complex values are refused (``TypeError``): an integer image is usually
  0–255 where the models expect [0, 1], and a silent cast would hide that;
- NaN and ±inf are refused (``ValueError``), after the cast, so a float64 value beyond the
  float32 range is refused too rather than becoming inf inside the graph.

Shape checks that depend on the explainer (channels and size as at fit, an export's static
dimensions) stay with each path. This module depends on torch and numpy only.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch
from torch import nn

Batch = Union[torch.Tensor, np.ndarray]


def parameter_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first floating-point parameter (float32 if it has none): what
    images are cast to on the torch path."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def check_image_batch(
    images: Any, dtype: torch.dtype, name: str = "images", allow_numpy: bool = False
) -> torch.Tensor:
    """``images`` as a ``[B, C, H, W]`` tensor of ``dtype``, or the error the rule gives.

    Args:
        images: a ``torch.Tensor`` (or, with ``allow_numpy``, a ``numpy.ndarray``, shared
            without a copy where possible).
        dtype: the floating-point dtype the values are cast to.
        name: the argument's name in error messages.
        allow_numpy: accept a ``numpy.ndarray`` too (the ONNX path).

    Raises:
        TypeError: not a tensor/array, or not floating-point values.
        ValueError: not 4-D, an empty batch, or a NaN/inf value (after the cast).
    """
    accepted = "a torch.Tensor or numpy.ndarray" if allow_numpy else "a torch.Tensor"
    if allow_numpy and isinstance(images, np.ndarray):
        if images.dtype.kind != "f":
            raise TypeError(f"{name}: expected floating-point values, got dtype {images.dtype}")
        images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    elif not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected {accepted} [B,C,H,W], got {type(images).__name__}")
    if not images.is_floating_point():
        got = str(images.dtype).removeprefix("torch.")
        raise TypeError(f"{name}: expected floating-point values, got dtype {got}")
    if images.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D batch [B,C,H,W], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got an empty batch")
    images = images.to(dtype)
    # one reduction settles the usual case (a finite sum has only finite terms); a sum that
    # overflowed or met a NaN/inf is decided element by element
    if not bool(torch.isfinite(images.sum())) and not bool(torch.isfinite(images).all()):
        what = str(dtype).removeprefix("torch.")
        raise ValueError(f"{name}: expected finite values (in {what}), got NaN or inf")
    return images
