"""Default layers read from the model itself: one traced forward pass instead of a zoo table.

:func:`discover_layers` finds, for any CNN classifier, the layers the explainers start from:
the last spatial feature map, the classifier producing the logits and the vector it receives.
:func:`describe` lists every module call of a forward pass (for error messages and for choosing
a layer by hand). Both run the model once on the first sample of ``example``, in eval mode and
without gradients, with hooks that are removed afterwards; nothing is stored on the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import nn

__all__ = ["LayerCall", "ModelLayers", "describe", "discover_layers", "format_layers"]


@dataclass(frozen=True)
class ModelLayers:
    """The default layers of a CNN classifier, as names for :class:`FeatureExtractor`.

    Attributes:
        feature_map: the last spatial map ``[B,C,h,w]`` (h·w > 1) before global pooling: the
            output of the activation after the last convolution where there is a ReLU-family one
            (non-negative, as concept methods expect), else the last spatial output.
        classifier: the last ``nn.Linear`` (or 1×1 ``nn.Conv2d`` head) producing the logits.
        penultimate: ``f"{classifier}:input"``, the vector fed to the classifier.
        n_classes: number of logits.
        input_size: ``(height, width)`` of the example the model was traced with.
    """

    feature_map: str
    classifier: str
    penultimate: str
    n_classes: int
    input_size: tuple[int, int]


class LayerCall(NamedTuple):
    """One module call of a traced forward pass.

    ``name`` is the address :class:`FeatureExtractor` accepts (``"name@k"`` for a module that
    ran ``calls`` > 1 times), ``shape`` the output's shape (None when it is not a tensor).
    """

    name: str
    calls: int
    shape: Optional[tuple[int, ...]]


@dataclass
class _Call:
    name: str
    module: nn.Module
    index: int  # which call of the module (0-based)
    start: int  # sequence numbers of the pre-hook and the hook
    end: int = -1
    output: object = None


def _example(example: torch.Tensor) -> torch.Tensor:
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example: expected a torch.Tensor [B,C,H,W], got {type(example).__name__}")
    if example.dim() != 4 or example.shape[0] < 1:
        raise ValueError(
            f"example: expected a batch [B,C,H,W] with B >= 1, got {tuple(example.shape)}"
        )
    return example[:1]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no BatchNorm statistics updated), the caller's modes after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _trace(model: nn.Module, example: torch.Tensor) -> tuple[list[_Call], object]:
    """Every submodule call of one forward pass on ``example[:1]``, in the order calls start,
    each with its output; and the model's output."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    x = _example(example)
    names = {id(m): n for n, m in model.named_modules() if n}
    calls: list[_Call] = []
    open_calls: dict[int, list[_Call]] = {}
    counts: dict[int, int] = {}
    clock = iter(range(1 << 62))

    def pre_hook(m: nn.Module, _args: object) -> None:
        k = counts.get(id(m), 0)
        counts[id(m)] = k + 1
        call = _Call(names[id(m)], m, k, next(clock))
        calls.append(call)
        open_calls.setdefault(id(m), []).append(call)

    def hook(m: nn.Module, _args: object, out: object) -> None:
        call = open_calls[id(m)].pop()
        call.end = next(clock)
        call.output = out

    handles = []
    try:
        for n, m in model.named_modules():
            if n:
                handles.append(m.register_forward_pre_hook(pre_hook))
                handles.append(m.register_forward_hook(hook))
        with torch.no_grad(), _eval_mode(model):
            output = model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, output


def _address(call: _Call, counts: dict[str, int]) -> str:
    return call.name if counts[call.name] == 1 else f"{call.name}@{call.index}"


def _rows(calls: list[_Call]) -> list[LayerCall]:
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    return [
        LayerCall(
            _address(c, counts),
            counts[c.name],
            tuple(c.output.shape) if isinstance(c.output, torch.Tensor) else None,
        )
        for c in calls
    ]


def describe(model: nn.Module, example: torch.Tensor) -> list[LayerCall]:
    """Every module call of one forward pass on ``example[:1]``, in call order (containers
    before their children): its address, how often the module ran and its output shape."""
    return _rows(_trace(model, example)[0])


def format_layers(rows: list[LayerCall], limit: int = 60) -> str:
    """``rows`` of :func:`describe` as an indented table (the last ``limit`` calls, which hold
    the layers one usually looks for)."""
    shown = rows[-limit:]
    width = max((len(r.name) for r in shown), default=0)
    lines = [f"  {r.name:<{width}}  x{r.calls}  {r.shape}" for r in shown]
    if len(rows) > len(shown):
        lines.insert(0, f"  ... ({len(rows) - len(shown)} earlier calls)")
    return "\n".join(lines)


def _is_relu_family(m: nn.Module) -> bool:
    """Activations whose output is non-negative: ReLU, ReLU6 and Hardtanh clamped at >= 0."""
    return isinstance(m, nn.ReLU) or (isinstance(m, nn.Hardtanh) and m.min_val >= 0)


def _is_spatial(out: object) -> bool:
    return isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1


def discover_layers(model: nn.Module, example: torch.Tensor) -> ModelLayers:
    """The default layers of CNN classifier ``model``, found by one traced forward pass.

    Args:
        model: a classifier whose output is logits ``[B, n_classes]``.
        example: an input batch ``[B,C,H,W]`` of the size the model expects (only its first
            sample is run).

    Raises:
        ValueError: the output is not ``[B, n_classes]``, no ``nn.Linear`` / 1×1 ``Conv2d``
            produces it, or no layer before the classifier outputs a spatial map; the message
            lists the model's layers.
    """
    calls, output = _trace(model, example)
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1

    def fail(problem: str) -> ValueError:
        table = format_layers(_rows(calls))
        return ValueError(f"model: {problem}. Its layers (name, calls, output shape):\n{table}")

    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise fail(f"expected logits [B, n_classes] as the model's output, got {got}")
    n_classes = int(output.shape[1])
    heads = [
        c
        for c in calls
        if (isinstance(c.module, nn.Linear) and c.module.out_features == n_classes)
        or (
            isinstance(c.module, nn.Conv2d)
            and tuple(c.module.kernel_size) == (1, 1)
            and c.module.out_channels == n_classes
        )
    ]
    linear = [c for c in heads if isinstance(c.module, nn.Linear)]
    if not heads:
        raise fail(f"no nn.Linear (or 1x1 nn.Conv2d) layer produces the {n_classes} logits")
    head = max(linear or heads, key=lambda c: c.end)
    before = [c for c in calls if c.end < head.start]
    spatial = [c for c in before if _is_spatial(c.output)]
    if not spatial:
        raise fail(
            f"no layer before the classifier {head.name!r} outputs a spatial map [B,C,h,w] "
            "with h*w > 1"
        )
    last = max(spatial, key=lambda c: c.end)
    convs = [c for c in before if isinstance(c.module, nn.Conv2d)]
    stage_start = max((c.end for c in convs), default=-1)
    activations = [c for c in spatial if c.end > stage_start and _is_relu_family(c.module)]
    chosen = max(activations, key=lambda c: c.end) if activations else last
    # name the outermost module returning that very tensor (a residual block, not its last ReLU)
    same = [c for c in before if c.output is chosen.output]
    chosen = max(same, key=lambda c: c.end)
    classifier = _address(head, counts)
    return ModelLayers(
        feature_map=_address(chosen, counts),
        classifier=classifier,
        penultimate=f"{classifier}:input",
        n_classes=n_classes,
        input_size=(int(example.shape[-2]), int(example.shape[-1])),
    )
