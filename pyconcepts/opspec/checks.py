"""Argument validation shared by the ops: errors name the argument, what was expected, what came."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Optional

import torch


def tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def integer(name: str, value: object) -> int:
    """``value`` as an int: Python or numpy integers, not bools."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return int(value)


def ndim(name: str, t: torch.Tensor, expected: int, layout: str) -> None:
    if t.dim() != expected:
        raise ValueError(
            f"{name}: expected a {expected}-D tensor {layout}, got shape {tuple(t.shape)}"
        )


def floating(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def same_device_dtype(pairs: Sequence[tuple[str, Optional[torch.Tensor]]]) -> None:
    """All given tensors share the first one's device and dtype."""
    present = [(n, t) for n, t in pairs if t is not None]
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected device {first.device} (as {first_name}), got {t.device}"
            )
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name}: expected dtype {first.dtype} (as {first_name}), got {t.dtype}"
            )


def finite(name: str, t: torch.Tensor) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
