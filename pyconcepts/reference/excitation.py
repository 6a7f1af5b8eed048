"""Excitation backprop (c-MWP) written as plain forward torch ops for a chain of layers.

The twin of :func:`pyconcepts.attribution.excitation.excitation_backprop` for sequential
networks, with no autograd: every rule is spelled out (conv_transpose for convolutions,
max-unpooling to the winners for max pooling), so the computation traces into a
standard ONNX graph. Supported chain links: Linear, Conv2d, ReLU, ReLU6 / Hardtanh (the signal
passes where the input is above the lower clamp, as in the hook version), ZeroPad2d /
ConstantPad2d with value 0 (the signal is cropped back), MaxPool2d (kernel = stride,
no padding or dilation), global average pooling (AdaptiveAvgPool2d to 1 × 1: the linear rule
with its positive weights 1/HW, so each position gets its share of the channel's sum), Flatten,
Dropout (eval), Identity, BatchNorm (eval, directly after a
Linear / Conv2d: folded into it, as the hook version does), and :class:`GatheredLinear` (a
per-sample choice among K linear layers, e.g. one SRAE encoder layer per explained class).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GatheredLinear", "chain_of", "excitation_backprop_chain"]


class GatheredLinear(nn.Module):
    """``y_b = x_b W[k_b] + c[k_b]`` with weights ``[K, in, out]`` and a per-sample group
    index set by :meth:`select` before the forward pass."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.index: Optional[torch.Tensor] = None

    def select(self, index: torch.Tensor) -> None:
        self.index = index

    def weights(self) -> torch.Tensor:
        """Per-sample weights ``[B, out, in]`` (the Linear layout)."""
        if self.index is None:
            raise RuntimeError("GatheredLinear: call select(index) before using it")
        return self.weight[self.index].transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.index is not None
        return torch.einsum("bi,bio->bo", x, self.weight[self.index]) + self.bias[self.index]


_LINKS = (
    nn.Linear, nn.Conv2d, nn.ReLU, nn.Hardtanh, nn.ConstantPad2d, nn.MaxPool2d,
    nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity,
)  # fmt: skip
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of Linear/Conv2d ``layer`` with the eval-mode BatchNorm ``bn`` after it folded in."""
    assert isinstance(layer, (nn.Linear, nn.Conv2d)) and isinstance(bn, _NORMS)
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    folded = copy.deepcopy(layer)
    with torch.no_grad():
        folded.weight.mul_(scale.reshape(-1, *([1] * (folded.weight.dim() - 1))))
        bias = torch.zeros_like(shift) if layer.bias is None else layer.bias.detach()
        folded.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
    return folded


def chain_of(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """The model's leaf modules in execution order, checked to form a chain (each one's input
    is the previous one's output) that reproduces the model's output; else ValueError."""
    order: list[tuple[str, nn.Module, int, int]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        order.append((names[module], module, id(args[0]), id(out)))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    keep: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            keep.append(model(example))
    finally:
        for h in handles:
            h.remove()
    chain: list[tuple[str, nn.Module]] = []
    for (name, module, x_id, _), prev in zip(order, [None, *order[:-1]]):
        if isinstance(module, _NORMS):
            if (
                module.training
                or prev is None
                or not isinstance(prev[1], (nn.Linear, nn.Conv2d))
                or x_id != prev[3]
            ):
                raise ValueError(
                    f"model: {name} must be an eval-mode BatchNorm right after a Linear/Conv2d"
                )
            chain[-1] = (name, _fold(chain[-1][1], module))
            continue
        if not isinstance(module, _LINKS):
            raise ValueError(f"model: {name} ({type(module).__name__}) is not supported here")
        if prev is not None and x_id != prev[3]:
            raise ValueError(
                f"model: {name} does not consume the output of {prev[0]} (not a chain)"
            )
        if isinstance(module, nn.Conv2d) and isinstance(module.padding, str):
            raise ValueError(f"model: {name} uses padding={module.padding!r}; give it as numbers")
        if isinstance(module, nn.ConstantPad2d) and (module.value != 0 or min(module.padding) < 0):
            raise ValueError(
                f"model: {name} pads {module.padding} with {module.value}; only non-negative "
                "zero padding is supported"
            )
        if isinstance(module, nn.MaxPool2d) and not _simple_pool(module):
            raise ValueError(f"model: {name} needs kernel_size == stride, no padding/dilation")
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size not in (1, (1, 1)):
            raise ValueError(
                f"model: {name} pools to {module.output_size}; only global average pooling "
                "(output size 1) is supported"
            )
        chain.append((name, module))
    return chain


def _simple_pool(m: nn.MaxPool2d) -> bool:
    stride = m.stride if m.stride is not None else m.kernel_size
    return m.kernel_size == stride and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1))


def _safe_div(p: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.where(y > eps, p / y.clamp_min(eps), torch.zeros_like(p))


def _linear_down(
    x: torch.Tensor, p: torch.Tensor, w: torch.Tensor, contrastive: bool, eps: float
) -> torch.Tensor:
    """x ``[B, in]``, p ``[B, T, out]``, w ``[out, in]`` or per-sample ``[B, out, in]``."""
    signs = (1.0, -1.0) if contrastive else (1.0,)
    total = torch.zeros(p.shape[0], p.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
    for sign in signs:
        wp = (sign * w).clamp(min=0)
        if wp.dim() == 2:
            y = x @ wp.t()
            back = _safe_div(p, y[:, None], eps) @ wp
        else:
            y = torch.einsum("bi,boi->bo", x, wp)
            back = torch.einsum("bto,boi->bti", _safe_div(p, y[:, None], eps), wp)
        total = total + sign * x[:, None] * back
    return total


def _conv_down(
    m: nn.Conv2d, x: torch.Tensor, p: torch.Tensor, contrastive: bool, eps: float
) -> torch.Tensor:
    """x ``[B, C, H, W]``, p ``[B, T, C', H', W']``."""
    b, t = p.shape[:2]
    signs = (1.0, -1.0) if contrastive else (1.0,)
    total = torch.zeros(b, t, *x.shape[1:], dtype=x.dtype, device=x.device)
    pad: tuple[int, int] = m.padding if isinstance(m.padding, tuple) else (0, 0)  # type: ignore[assignment]
    for sign in signs:
        wp = (sign * m.weight).clamp(min=0)
        y = F.conv2d(x, wp, None, m.stride, pad, m.dilation, m.groups)
        s = _safe_div(p, y[:, None], eps).reshape(b * t, *y.shape[1:])
        out_pad = [
            x.shape[2 + i]
            - (
                (y.shape[2 + i] - 1) * m.stride[i]
                - 2 * pad[i]
                + m.dilation[i] * (m.kernel_size[i] - 1)
                + 1
            )
            for i in range(2)
        ]
        back = F.conv_transpose2d(s, wp, None, m.stride, pad, out_pad, m.groups, m.dilation)
        total = total + sign * x[:, None] * back.reshape(b, t, *x.shape[1:])
    return total


def _pool_down(m: nn.MaxPool2d, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Winner-take-all: each window's probability goes to the element max pooling picked (the
    same element its gradient would reach, ties included)."""
    k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
    b, t = p.shape[:2]
    height, width = int(x.shape[-2]), int(x.shape[-1])
    hk, wk = height // k * k, width // k * k  # pooling drops the remainder rows/columns
    _, idx = F.max_pool2d(x[..., :hk, :wk], k, return_indices=True)
    # "unpool" as plain ops: a position receives its window's signal if it is the winner
    # (indices are < hk·wk, exact in float32 for maps up to 4096×4096)
    winner = F.interpolate(idx.to(p.dtype), scale_factor=k, mode="nearest")
    pos = torch.arange(hk * wk, dtype=p.dtype, device=p.device).reshape(hk, wk)
    p_up = F.interpolate(p.reshape(b * t, *p.shape[2:]), scale_factor=k, mode="nearest")
    out = p_up.reshape(b, t, *p_up.shape[1:]) * (winner == pos).to(p.dtype)[:, None]
    if (hk, wk) != (height, width):
        out = F.pad(out, (0, width - wk, 0, height - hk))
    return out


def excitation_backprop_chain(
    chain: Sequence[nn.Module],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    stop: Optional[int] = None,
    contrastive: bool = True,
    size: Optional[Sequence[int]] = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """c-MWP maps ``[B, T, ...]`` of the chain's output units ``targets`` (long ``[B, T]``).

    ``stop``: read the maps at the output of ``chain[stop]`` instead of the input. The top
    weighted link (the last Linear / Conv2d / GatheredLinear) gets the contrastive rule.
    """
    acts = [inputs]
    for link in chain:
        acts.append(link(acts[-1]))
    out = acts[-1].reshape(inputs.shape[0], -1)
    p = F.one_hot(targets, out.shape[1]).to(out.dtype)  # [B, T, out]
    weighted = (nn.Linear, nn.Conv2d, GatheredLinear)
    top = max(i for i, link in enumerate(chain) if isinstance(link, weighted))
    first = -1 if stop is None else stop
    for i in range(len(chain) - 1, first, -1):
        link, x = chain[i], acts[i]
        p = p.reshape(p.shape[0], p.shape[1], *acts[i + 1].shape[1:])
        if isinstance(link, GatheredLinear):
            p = _linear_down(x, p, link.weights(), contrastive and i == top, eps)
        elif isinstance(link, nn.Linear):
            p = _linear_down(x, p, link.weight, contrastive and i == top, eps)
        elif isinstance(link, nn.Conv2d):
            p = _conv_down(link, x, p, contrastive and i == top, eps)
        elif isinstance(link, nn.MaxPool2d):
            p = _pool_down(link, x, p)
        elif isinstance(link, nn.AdaptiveAvgPool2d):  # x·(1/HW)·P / mean(x) = x·P / sum(x)
            share = _safe_div(p.flatten(2), x.sum((-2, -1))[:, None], eps)
            p = x[:, None] * share[..., None, None]
        elif isinstance(link, nn.ReLU):  # as its gradient: nothing passes an inactive unit
            p = p * (x > 0).to(p.dtype)[:, None]
        elif isinstance(link, nn.Hardtanh):  # active units pass, saturated ones included
            p = p * (x > link.min_val).to(p.dtype)[:, None]
        elif isinstance(link, nn.ConstantPad2d):  # padded zeros receive nothing: crop
            left, right, top, bottom = link.padding
            height, width = p.shape[-2], p.shape[-1]
            p = p[..., top : height - bottom, left : width - right]
        else:  # Flatten, Dropout, Identity: the signal passes unchanged
            p = p.reshape(p.shape[0], p.shape[1], *x.shape[1:])
    maps = p.sum(2) if p.dim() > 3 else p
    if contrastive:
        maps = maps.clamp(min=0)
    if size is not None and maps.dim() > 3:
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps
