"""Excitation backprop: (contrastive) marginal winning probability maps (Zhang et al., ECCV 2016).

Top-down attention as a probabilistic winner-take-all. For a layer ``y = W x`` with non-negative
inputs ``x`` (post-ReLU activations) the probability ``P(y_i)`` of an output neuron is handed to
its children in proportion to their *excitatory* contribution::

    P(x_j) = sum_i  x_j W+_ij / (sum_j' x_j' W+_ij') * P(y_i)      W+ = max(W, 0), biases ignored

i.e. ``P_x = x * W+^T (P_y / (W+ x))``. Average pooling is the same rule with its (positive)
weights, max pooling routes all probability to the winner (its ordinary gradient), ReLU, flatten,
dropout (eval) and reshapes pass it unchanged. The *contrastive* MWP (c-MWP) subtracts the map of
a dual unit whose incoming weights are the negation of the target's: at the top weighted layer
``P_x = x * (W+^T(P/W+x) - W-^T(P/W-x))`` with ``W- = max(-W, 0)``, and since every lower rule is
linear in the signal the difference then propagates through the ordinary MWP rules. The map at
the chosen layer is summed over channels; c-MWP keeps its positive part, as in the paper.

Implementation on modern torch: forward hooks replace the output of every Linear / Conv /
AvgPool module by an autograd node whose backward is the excitation rule (the output value is
unchanged), BatchNorm directly after a Linear/Conv is folded into that layer's weights (its scale
may flip signs, so it cannot be a separate rule), and the maps are ``torch.autograd.grad`` of the
target scalar with respect to the chosen layer's output (or the input). Any other module that
holds parameters or is not in the supported list raises a ValueError naming it. Operations done
functionally inside ``forward`` (``torch.flatten``, ``F.relu``, ``F.max_pool2d``, views) keep
their ordinary gradients, which equal the rules above; a functional average pool or a residual sum
would not, and cannot be detected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["excitation_backprop"]

LayerRef = Union[str, nn.Module]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_AVG_POOL = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules whose ordinary gradient already is the excitation rule.
_PASS = (
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
)
_SUPPORTED = _WEIGHTED + _AVG_POOL + _BATCH_NORM + _PASS


class _Node:
    """One excited layer: its module, a folded BatchNorm scale and whether it is the top layer."""

    __slots__ = ("contrastive", "module", "output", "scale")

    def __init__(self, module: nn.Module, output: torch.Tensor) -> None:
        self.module = module
        self.output: Optional[torch.Tensor] = output
        self.scale: Optional[torch.Tensor] = None
        self.contrastive = False

    def positive_op(self, x: torch.Tensor, sign: float) -> torch.Tensor:
        """The layer with only its excitatory (sign=+1) or inhibitory (sign=-1) weights, no bias."""
        m: Any = self.module
        if isinstance(m, _AVG_POOL):
            return m.forward(x)  # not m(x): that would run the excitation hooks again
        weight: torch.Tensor = m.weight
        if self.scale is not None:
            weight = weight * self.scale.reshape(-1, *([1] * (weight.dim() - 1)))
        weight = (sign * weight).clamp(min=0)
        if isinstance(m, nn.Linear):
            return F.linear(x, weight)
        return m._conv_forward(x, weight, None)


def _winning(
    op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, p: torch.Tensor, eps: float
) -> torch.Tensor:
    """``x * op^T(p / op(x))`` for a linear op with non-negative weights (zero where op(x)<=eps)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        y = op(leaf)
        share = torch.where(y > eps, p / y.clamp_min(eps), torch.zeros_like(y))
        (back,) = torch.autograd.grad(y, leaf, share)
    return x.detach() * back


class _Excite(torch.autograd.Function):
    """Identity on the layer's output value; backward hands the signal down by the MWP rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out: torch.Tensor, node: _Node, eps: float) -> Any:
        ctx.save_for_backward(x)
        ctx.node = node
        ctx.eps = eps
        return out.clone()

    @staticmethod
    def backward(ctx: Any, p: torch.Tensor) -> Any:
        (x,) = ctx.saved_tensors
        node: _Node = ctx.node
        down = _winning(lambda t: node.positive_op(t, 1.0), x, p, ctx.eps)
        if node.contrastive:
            down = down - _winning(lambda t: node.positive_op(t, -1.0), x, p, ctx.eps)
        return down, None, None, None


class _PassThrough(torch.autograd.Function):
    """Identity on the value of ``out``; the signal reaches ``x`` unchanged (folded BatchNorm)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out: torch.Tensor) -> Any:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, p: torch.Tensor) -> Any:
        return p, None


def _resolve(model: nn.Module, ref: LayerRef, argument: str) -> nn.Module:
    if isinstance(ref, nn.Module):
        if not any(m is ref for m in model.modules()):
            raise ValueError(f"{argument}: the given module is not part of the model")
        return ref
    names = dict(model.named_modules())
    if ref not in names or ref == "":
        available = ", ".join(n for n in names if n)
        raise ValueError(f"{argument}: no layer named {ref!r}; the model has: {available}")
    return names[ref]


def _check_modules(model: nn.Module) -> None:
    bad = []
    for name, m in model.named_modules():
        is_leaf = next(m.children(), None) is None
        owns_params = next(m.parameters(recurse=False), None) is not None
        if (is_leaf or owns_params) and not isinstance(m, _SUPPORTED):
            bad.append(f"{name or '<root>'} ({type(m).__name__})")
        if isinstance(m, (*_BATCH_NORM, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            if m.training:
                raise ValueError(
                    f"model: {name} ({type(m).__name__}) is in training mode; call model.eval() "
                    "before excitation backprop"
                )
    if bad:
        supported = ", ".join(sorted({t.__name__ for t in _SUPPORTED}))
        raise ValueError(
            "model: excitation backprop does not support layer(s) "
            f"{', '.join(bad)}; supported: {supported}"
        )


def _targets(targets: Union[int, Sequence[int], torch.Tensor], batch: int) -> torch.Tensor:
    """Targets as a long tensor [B, T]: one flat output index per sample and map."""
    if isinstance(targets, torch.Tensor):
        t = targets.long()
        if t.dim() == 0:
            t = t.reshape(1, 1).expand(batch, 1)
        elif t.dim() == 1:
            if t.shape[0] != batch:
                raise ValueError(
                    f"targets: a 1-D tensor needs one index per sample ({batch}), "
                    f"got shape {tuple(t.shape)}"
                )
            t = t[:, None]
        elif t.dim() != 2 or t.shape[0] != batch:
            raise ValueError(
                f"targets: expected shape [{batch}] or [{batch}, T], got {tuple(t.shape)}"
            )
        return t
    if isinstance(targets, int):
        return torch.full((batch, 1), targets, dtype=torch.long)
    values = list(targets)
    if not values or not all(isinstance(v, int) for v in values):
        raise TypeError(
            f"targets: expected an int, a non-empty sequence of ints or a tensor, got {targets!r}"
        )
    return torch.tensor(values, dtype=torch.long)[None, :].expand(batch, len(values))


def excitation_backprop(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Union[int, Sequence[int], torch.Tensor],
    *,
    output_layer: Optional[LayerRef] = None,
    layer: Optional[LayerRef] = None,
    contrastive: bool = True,
    size: Optional[Sequence[int]] = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """(Contrastive) marginal winning probability maps of target scalars.

    Args:
        model: a network of supported layers (see the module docstring), in eval mode.
        inputs: a batch ``[B, ...]``; must be non-negative when ``layer`` is None (the rule needs
            non-negative activations; pick a layer after a ReLU for normalised images).
        targets: which scalars to explain, as flat indices into one sample's output of
            ``output_layer``: an int or a sequence of ints (the same for every sample, one map
            each) or a long tensor ``[B]`` / ``[B, T]`` of per-sample indices.
        output_layer: layer (dotted name or module) whose output holds the target scalars, e.g.
            an x-feature layer or a hidden unit; None = the model's output (logits).
        layer: layer whose *output* neurons receive the probabilities; None = the input itself.
        contrastive: c-MWP (target minus its dual unit at the top weighted layer, positive part)
            rather than plain MWP.
        size: resize spatial maps (bilinear) to this size, e.g. the image's ``(H, W)``.
        eps: outputs whose excitatory input is at most ``eps`` pass no probability down.

    Returns:
        ``[B, T, *spatial]`` maps summed over channels for spatial layers, ``[B, T, D]``
        per-unit probabilities for flat layers.
    """
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError(
            f"inputs: expected a floating-point torch.Tensor, got {type(inputs).__name__}"
        )
    _check_modules(model)
    batch = inputs.shape[0]
    index = _targets(targets, batch).to(inputs.device)
    saliency = None if layer is None else _resolve(model, layer, "layer")
    top_module = None if output_layer is None else _resolve(model, output_layer, "output_layer")

    nodes: list[_Node] = []
    by_output: dict[int, _Node] = {}
    captured: dict[str, Any] = {}

    def excite(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.requires_grad and bool((x < 0).any()):
            raise ValueError(
                f"excitation backprop needs non-negative activations, but the input of "
                f"{type(module).__name__} has minimum {float(x.detach().min()):.4g}; "
                "pass layer=<a layer after a ReLU> or non-negative inputs"
            )
        node = _Node(module, out)
        new = _Excite.apply(x, out.detach(), node, eps)
        node.output = new
        nodes.append(node)
        by_output[id(new)] = node
        return new

    def fold(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        node = by_output.get(id(x))
        if node is None or node.output is not x or not isinstance(node.module, _WEIGHTED):
            raise ValueError(
                f"{type(module).__name__}: excitation backprop folds BatchNorm into the "
                "Linear/Conv "
                "layer that directly precedes it; this one follows another operation"
            )
        bn: Any = module
        scale = torch.ones_like(bn.running_var) if bn.weight is None else bn.weight.detach()
        node.scale = scale / torch.sqrt(bn.running_var + bn.eps)
        return _PassThrough.apply(x, out.detach())

    def capture_saliency(
        module: nn.Module, args: tuple[Any, ...], out: torch.Tensor
    ) -> torch.Tensor:
        if "saliency" in captured:
            raise ValueError("layer: the chosen layer runs more than once per forward pass")
        leaf = out.detach().requires_grad_(True)
        captured["saliency"] = leaf
        return leaf

    def capture_output(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        captured.setdefault("output", out)
        captured.setdefault("n_nodes", len(nodes))

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, (*_WEIGHTED, *_AVG_POOL)):
                handles.append(m.register_forward_hook(excite))
            elif isinstance(m, _BATCH_NORM):
                handles.append(m.register_forward_hook(fold))
        if saliency is not None:
            handles.append(saliency.register_forward_hook(capture_saliency))
        if top_module is not None:
            handles.append(top_module.register_forward_hook(capture_output))
        x_in = inputs.detach().requires_grad_(saliency is None)
        with torch.enable_grad():
            out = model(x_in)
            if top_module is not None:
                out = captured["output"]
                n_nodes = captured["n_nodes"]
            else:
                n_nodes = len(nodes)
            top = next(
                (n for n in reversed(nodes[:n_nodes]) if isinstance(n.module, _WEIGHTED)), None
            )
            if top is None:
                raise ValueError("model: no Linear/Conv layer produces the target output")
            top.contrastive = contrastive
            wrt = x_in if saliency is None else captured.get("saliency")
            if wrt is None:
                raise ValueError("layer: the chosen layer did not run in the forward pass")
            flat = out.reshape(batch, -1)
            if int(index.max()) >= flat.shape[1] or int(index.min()) < 0:
                raise ValueError(
                    f"targets: indices must lie in [0, {flat.shape[1]}), got "
                    f"[{int(index.min())}, {int(index.max())}]"
                )
            maps = []
            for t in range(index.shape[1]):
                seed = torch.zeros_like(flat)
                seed.scatter_(1, index[:, t : t + 1], 1.0)
                (signal,) = torch.autograd.grad(
                    flat, wrt, seed, retain_graph=t + 1 < index.shape[1], allow_unused=True
                )
                if signal is None:
                    raise ValueError("layer: the target output does not depend on the chosen layer")
                maps.append(signal.sum(dim=1) if signal.dim() > 2 else signal)
    finally:
        for h in handles:
            h.remove()
        for node in nodes:  # node.output -> grad_fn -> ctx.node: a cycle gc cannot see
            node.output = None
    result = torch.stack(maps, dim=1).detach()
    if contrastive:
        result = result.clamp(min=0)
    if size is not None and result.dim() > 3:
        result = F.interpolate(result, size=tuple(size), mode="bilinear", align_corners=False)
    return result
