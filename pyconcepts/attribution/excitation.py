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
may flip signs, so it cannot be a separate rule), ReLU6 / Hardtanh pass the signal wherever their
input is above the lower clamp (an active unit, saturated or not, as ReLU does), zero padding
passes it to the unpadded part (its gradient), and the maps are ``torch.autograd.grad`` of the
target scalar with respect to the chosen layer's output (or the input). Convolutions with their
own ``forward`` (e.g. TensorFlow-style "same" padding) are run through that forward with the
excitatory weights. Any other module that holds parameters or is not in the supported list
raises a ValueError naming it.

Operations done functionally inside ``forward`` are checked on the autograd graph of the pass:
views, ``torch.flatten``, ``F.relu``, ``F.max_pool*``, ``F.pad`` and adding a constant keep
their ordinary gradients, which equal the rules above. A graph with anything else between the
chosen layer and the target (a residual sum ``x + f(x)``, a gating product, a functional mean),
or negative inputs to excited layers in such a model, cannot be followed by the rule: the maps
then fall back to gradient × activation, each unit's term clamped at zero and summed over
channels (``contrastive`` has no effect there),
with a ``UserWarning`` naming what was unsupported. EfficientNet's residual blocks, whose linear
bottlenecks are about half negative, take this path.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from pyconcepts.models.features import LayerAddress, LayerRef, parse_layer

__all__ = ["excitation_backprop"]

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
# ReLU6 and other clamps: the signal passes where the input is above min_val.
_GATES = (nn.Hardtanh,)
# Padding with zeros: its gradient (a crop) is the rule, since padded zeros receive nothing.
_CONSTANT_PAD = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
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
_SUPPORTED = _WEIGHTED + _AVG_POOL + _BATCH_NORM + _GATES + _CONSTANT_PAD + _PASS
# Autograd nodes whose gradient is the rule (views, ReLU, max pooling, zero padding, copies) or
# ours; any other node between the chosen layer and the target is an unsupported operation.
_RULE_NODES = ("_ExciteBackward", "_PassThroughBackward", "_GateBackward", "ReluBackward",
               "ThresholdBackward", "MaxPool", "AdaptiveMaxPool", "ConstantPadNdBackward",
               "ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "SqueezeBackward",
               "UnsqueezeBackward", "CloneBackward", "AliasBackward")  # fmt: skip
_SHIFT_NODES = ("AddBackward", "SubBackward")  # fine when only one side depends on the input


class _Node:
    """One excited layer: its module, a folded BatchNorm scale and whether it is the top layer."""

    __slots__ = ("contrastive", "excited", "module", "output", "scale")

    def __init__(self, module: nn.Module, output: torch.Tensor) -> None:
        self.module = module
        self.output: Optional[torch.Tensor] = output
        self.scale: Optional[torch.Tensor] = None
        self.contrastive = False
        # sign -> (input leaf, W±·x with its graph, where it passes probability, its clamped
        # value): the same for every target's signal
        self.excited: dict[float, tuple[torch.Tensor, ...]] = {}

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
        base = next(cls for cls in type(m).__mro__ if cls in _WEIGHTED)
        if type(m).forward is base.forward:
            return m._conv_forward(x, weight, None)
        # a convolution with its own forward (e.g. static "same" padding): run that forward
        # with the excitatory weights and no bias (the excitation hooks are off in backward)
        params = {"weight": weight}
        if m.bias is not None:
            params["bias"] = torch.zeros_like(m.bias)
        return torch.func.functional_call(m, params, (x,))


def _winning(
    node: _Node, sign: float, x: torch.Tensor, p: torch.Tensor, eps: float
) -> torch.Tensor:
    """``x * op^T(p / op(x))`` for the layer ``op`` with only its excitatory (sign=+1) or
    inhibitory (sign=-1) weights (zero where op(x) <= eps). ``op(x)`` and its graph are kept on
    the node, so the signals of several targets reuse one forward of the layer."""
    if sign not in node.excited:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            y = node.positive_op(leaf, sign)
        out = y.detach()
        node.excited[sign] = (leaf, y, out > eps, out.clamp_min(eps))
    leaf, y, passes, denominator = node.excited[sign]
    share = torch.where(passes, p / denominator, 0.0)
    (back,) = torch.autograd.grad(y, leaf, share, retain_graph=True)
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
        down = _winning(node, 1.0, x, p, ctx.eps)
        if node.contrastive:
            down = down - _winning(node, -1.0, x, p, ctx.eps)
        return down, None, None, None


class _PassThrough(torch.autograd.Function):
    """Identity on the value of ``out``; the signal reaches ``x`` unchanged (folded BatchNorm)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out: torch.Tensor) -> Any:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, p: torch.Tensor) -> Any:
        return p, None


class _Gate(torch.autograd.Function):
    """Identity on the value of ``out``; the signal passes where ``x`` is above ``low`` (an
    active unit of ReLU6 / Hardtanh, including saturated ones, whose gradient would be 0)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out: torch.Tensor, low: float) -> Any:
        ctx.save_for_backward(x)
        ctx.low = low
        return out.clone()

    @staticmethod
    def backward(ctx: Any, p: torch.Tensor) -> Any:
        (x,) = ctx.saved_tensors
        return p * (x > ctx.low).to(p.dtype), None, None


def _resolve(model: nn.Module, ref: LayerRef, argument: str) -> LayerAddress:
    """The layer ``ref`` (name, ``name@k`` or module); its output — or, for the target
    (``output_layer``), also ``name:input``, what the module receives."""
    try:
        address = parse_layer(model, ref)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{argument}: {str(exc).removeprefix('layer: ')}") from None
    if address.port == "input" and argument != "output_layer":
        raise ValueError(
            f"{argument}: {address.key!r} names a module's input; excitation backprop reads "
            "layer outputs: name the layer that produces it"
        )
    return address


def _check_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Refuse unsupported layers and training mode; return the parameter-free leaves of other
    types, which are accepted only if they return their input unchanged (a custom Identity,
    checked in the forward pass by :func:`_unsupported_layers`)."""
    bad, unknown = [], []
    for name, m in model.named_modules():
        is_leaf = next(m.children(), None) is None
        owns_params = next(m.parameters(recurse=False), None) is not None
        if owns_params and not isinstance(m, _SUPPORTED):
            bad.append(f"{name or '<root>'} ({type(m).__name__})")
        elif is_leaf and not isinstance(m, _SUPPORTED):
            unknown.append((name or "<root>", m))
        elif isinstance(m, _CONSTANT_PAD) and m.value != 0:
            bad.append(f"{name} ({type(m).__name__} with value {m.value})")
        if isinstance(m, (*_BATCH_NORM, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            if m.training:
                raise ValueError(
                    f"model: {name} ({type(m).__name__}) is in training mode; call model.eval() "
                    "before excitation backprop"
                )
    if bad:
        raise _unsupported_layers(bad)
    return unknown


def _unsupported_layers(bad: list[str]) -> ValueError:
    supported = ", ".join(sorted({t.__name__ for t in _SUPPORTED}))
    return ValueError(
        f"model: excitation backprop does not support layer(s) {', '.join(bad)}; "
        f"supported: {supported} (and parameter-free layers returning their input)"
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


class _Switch:
    """Shared by the hooks: ``off`` while the rules run the layers again during backward."""

    off = False


def _capture(
    model: nn.Module,
    saliency: Optional[LayerAddress],
    top: Optional[LayerAddress],
    captured: dict[str, Any],
    count_nodes: Callable[[], int],
    switch: _Switch,
) -> list[Any]:
    """Hooks reading the chosen layer (replaced by a leaf the maps are taken at) and the target
    layer at their requested calls; a plain name of a module that runs twice is an error."""
    handles = []
    for role, address in (("saliency", saliency), ("output", top)):
        if address is None:
            continue
        calls = [0]

        def hook(
            module: nn.Module,
            args: tuple[Any, ...],
            out: Optional[torch.Tensor] = None,
            role: str = role,
            address: LayerAddress = address,
            calls: list[int] = calls,
        ) -> Optional[torch.Tensor]:
            if out is None:  # a pre-hook: the target is the module's input
                out = args[0]
            if switch.off:
                return None
            k, calls[0] = calls[0], calls[0] + 1
            argument = "layer" if role == "saliency" else "output_layer"
            if address.call is None and k == 1:
                raise ValueError(
                    f"{argument}: {address.name!r} runs more than once per forward pass; name "
                    f"the call, e.g. '{address.name}@0' or '{address.name}@1'"
                )
            if k != (address.call or 0):
                return None
            if role == "saliency":
                captured["saliency"] = out.detach().requires_grad_(True)
                return captured["saliency"]
            captured["output"] = out
            captured["n_nodes"] = count_nodes()
            return None

        if address.port == "input":  # only a target can be an input (see _resolve)
            handles.append(address.module.register_forward_pre_hook(hook))
        else:
            handles.append(address.module.register_forward_hook(hook))
    return handles


def _unsupported_ops(out: torch.Tensor, wrt: torch.Tensor) -> Counter[str]:
    """Autograd nodes between ``wrt`` and ``out`` whose gradient is not an excitation rule."""
    found: Counter[str] = Counter()
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if name == "AccumulateGrad":
            if getattr(node, "variable", None) is not wrt:
                found["a parameter used outside a supported layer"] += 1
            continue
        inputs = [f for f, _ in node.next_functions if f is not None]
        if not name.startswith(_RULE_NODES) and not (
            name.startswith(_SHIFT_NODES) and len(inputs) <= 1
        ):
            found[name] += 1
        stack.extend(inputs)
    return found


def _signals(flat: torch.Tensor, wrt: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
    """Backward signal at ``wrt`` of each target column of ``index`` (flat output indices)."""
    if int(index.max()) >= flat.shape[1] or int(index.min()) < 0:
        raise ValueError(
            f"targets: indices must lie in [0, {flat.shape[1]}), got "
            f"[{int(index.min())}, {int(index.max())}]"
        )
    signals = []
    for t in range(index.shape[1]):
        seed = torch.zeros_like(flat)
        seed.scatter_(1, index[:, t : t + 1], 1.0)
        (signal,) = torch.autograd.grad(
            flat, wrt, seed, retain_graph=t + 1 < index.shape[1], allow_unused=True
        )
        if signal is None:
            raise ValueError("layer: the target output does not depend on the chosen layer")
        signals.append(signal)
    return signals


def _channel_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=1) if t.dim() > 2 else t


def _gradient_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    index: torch.Tensor,
    saliency: Optional[LayerAddress],
    top: Optional[LayerAddress],
) -> torch.Tensor:
    """The fallback: the excitatory part of gradient × activation at the chosen layer (each
    unit's contribution clamped at zero, then summed over channels). Clamping before the sum
    keeps the positive evidence of every channel; summing first lets large negative
    contributions of other channels erase it (seen on EfficientNet's last blocks)."""
    captured: dict[str, Any] = {}
    handles = _capture(model, saliency, top, captured, lambda: 0, _Switch())
    x_in = inputs.detach().requires_grad_(saliency is None)
    try:
        with torch.enable_grad():
            out = model(x_in)
            out = captured["output"] if top is not None else out
            wrt = x_in if saliency is None else captured["saliency"]
            signals = _signals(out.reshape(inputs.shape[0], -1), wrt, index)
    finally:
        for h in handles:
            h.remove()
    maps = [_channel_sum((s * wrt.detach()).clamp(min=0)) for s in signals]
    return torch.stack(maps, dim=1).detach()


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
        output_layer: layer (module, dotted name, or ``name@k`` for the k-th call of a module
            that runs several times) whose output holds the target scalars, e.g. an x-feature
            layer or a hidden unit; None = the model's output (logits).
        layer: layer (as ``output_layer``) whose *output* neurons receive the probabilities;
            None = the input itself.
        contrastive: c-MWP (target minus its dual unit at the top weighted layer, positive part)
            rather than plain MWP.
        size: resize spatial maps (bilinear) to this size, e.g. the image's ``(H, W)``.
        eps: outputs whose excitatory input is at most ``eps`` pass no probability down.

    Returns:
        ``[B, T, *spatial]`` maps summed over channels for spatial layers, ``[B, T, D]``
        per-unit probabilities for flat layers. For models the rule cannot follow (module
        docstring), the positive part of gradient × activation, with a ``UserWarning``.
    """
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError(
            f"inputs: expected a floating-point torch.Tensor, got {type(inputs).__name__}"
        )
    unknown = _check_modules(model)
    batch = inputs.shape[0]
    index = _targets(targets, batch).to(inputs.device)
    saliency = None if layer is None else _resolve(model, layer, "layer")
    top = None if output_layer is None else _resolve(model, output_layer, "output_layer")
    names = {id(m): n or "<root>" for n, m in model.named_modules()}

    nodes: list[_Node] = []
    by_output: dict[int, _Node] = {}
    captured: dict[str, Any] = {}
    # excited layers whose input in the graph has negative values: the chosen layer (or input)
    # itself, which the caller can change, or an activation inside the model
    negative: dict[bool, list[str]] = {True: [], False: []}
    switch = _Switch()

    def excite(
        module: nn.Module, args: tuple[Any, ...], out: torch.Tensor
    ) -> Optional[torch.Tensor]:
        if switch.off:
            return None
        x = args[0]
        if x.requires_grad and bool((x < 0).any()):
            lowest = float(x.detach().min())
            where = f"{names[id(module)]} ({type(module).__name__}, min {lowest:.4g})"
            negative[x is captured.get("saliency", x_in)].append(where)
        node = _Node(module, out)
        new = _Excite.apply(x, out.detach(), node, eps)
        node.output = new
        nodes.append(node)
        by_output[id(new)] = node
        return new

    def fold(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Optional[torch.Tensor]:
        if switch.off:
            return None
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

    changed: list[str] = []  # layers of unknown type that did not return their input

    def identity_only(module: nn.Module, args: tuple[Any, ...], out: object) -> None:
        if not switch.off and not (args and out is args[0]):
            changed.append(f"{names[id(module)]} ({type(module).__name__})")

    def gate(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Optional[torch.Tensor]:
        if switch.off:
            return None
        low: Any = module.min_val
        return _Gate.apply(args[0], out.detach(), float(low))

    handles = []
    fallback: Optional[str] = None
    try:
        for m in model.modules():
            if isinstance(m, (*_WEIGHTED, *_AVG_POOL)):
                handles.append(m.register_forward_hook(excite))
            elif isinstance(m, _BATCH_NORM):
                handles.append(m.register_forward_hook(fold))
            elif isinstance(m, _GATES):
                handles.append(m.register_forward_hook(gate))
        handles += [m.register_forward_hook(identity_only) for _, m in unknown]
        handles += _capture(model, saliency, top, captured, lambda: len(nodes), switch)
        x_in = inputs.detach().requires_grad_(saliency is None)
        with torch.enable_grad():
            out = model(x_in)
            switch.off = True  # from here on, layers run only inside the rules
            if changed:
                raise _unsupported_layers(sorted(set(changed)))
            n_nodes = len(nodes)
            if top is not None:
                out, n_nodes = captured["output"], captured["n_nodes"]
            wrt = x_in if saliency is None else captured.get("saliency")
            if wrt is None:
                raise ValueError("layer: the chosen layer did not run in the forward pass")
            unsupported = _unsupported_ops(out, wrt)
            if unsupported or negative[False]:
                fallback = _fallback_reason(unsupported, [*negative[True], *negative[False]])
            elif negative[True]:
                raise ValueError(
                    f"excitation backprop needs non-negative activations, but the input of "
                    f"{negative[True][0]} is negative; pass layer=<a layer after a ReLU> or "
                    "non-negative inputs"
                )
            else:
                top_node = next(
                    (n for n in reversed(nodes[:n_nodes]) if isinstance(n.module, _WEIGHTED)),
                    None,
                )
                if top_node is None:
                    raise ValueError("model: no Linear/Conv layer produces the target output")
                top_node.contrastive = contrastive
                signals = _signals(out.reshape(batch, -1), wrt, index)
    finally:
        for h in handles:
            h.remove()
        for node in nodes:  # node.output -> grad_fn -> ctx.node: a cycle gc cannot see
            node.output = None
    if fallback is not None:
        warnings.warn(fallback, UserWarning, stacklevel=2)
        result = _gradient_maps(model, inputs, index, saliency, top)
    else:
        result = torch.stack([_channel_sum(s) for s in signals], dim=1).detach()
        if contrastive:
            result = result.clamp(min=0)
    if size is not None and result.dim() > 3:
        result = F.interpolate(result, size=tuple(size), mode="bilinear", align_corners=False)
    return result


def _fallback_reason(unsupported: Counter[str], negative: list[str]) -> str:
    problems = []
    if unsupported:
        ops = ", ".join(f"{name} x{count}" for name, count in unsupported.most_common())
        problems.append(
            f"operations outside the supported layers between the chosen layer and the target "
            f"({ops}; AddBackward is a sum of two branches, e.g. a residual connection)"
        )
    if negative:
        shown = ", ".join(negative[:3]) + (
            f" and {len(negative) - 3} more" if len(negative) > 3 else ""
        )
        problems.append(f"negative inputs to excited layers ({shown})")
    return (
        f"excitation backprop cannot follow this model: {'; '.join(problems)}. Using "
        "the positive part of gradient x activation instead"
    )
