"""FeatureExtractor: named intermediate activations of any torch model, via forward hooks.

Hooks live only for the duration of one call (no hooks are left on the model, which is what
leaks memory in long batch runs). Outputs of layers followed by in-place operations are cloned
so later in-place ReLUs cannot change them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Callable, Literal, Optional, Union, overload

import torch
from torch import nn

LayerRef = Union[str, nn.Module]


def resolve_layer(model: nn.Module, layer: LayerRef) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` for a layer given by dotted name or module object."""
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                return name, module
        raise ValueError(f"layer: the given {type(layer).__name__} module is not part of the model")
    if not isinstance(layer, str):
        raise TypeError(
            f"layer: expected a dotted name or an nn.Module, got {type(layer).__name__}"
        )
    if layer in named and layer != "":
        return layer, named[layer]
    names = [n for n in named if n]
    close = difflib.get_close_matches(layer, names, n=3)
    hint = f"; did you mean {close}?" if close else ""
    shown = names if len(names) <= 40 else [*names[:40], f"... ({len(names) - 40} more)"]
    raise ValueError(f"layer: no layer named {layer!r} in the model{hint} Available: {shown}")


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass once every requested layer is captured."""


class FeatureExtractor:
    """Capture the outputs of ``layers`` of ``model`` for a batch of inputs.

    >>> fx = FeatureExtractor(model, ["features.relu4", "fc1"])     # doctest: +SKIP
    >>> feats = fx(images)                  # {"features.relu4": [B,128,8,8], "fc1": [B,256]}
    >>> feats, logits = fx(images, return_output=True)

    Args:
        model: any ``nn.Module``.
        layers: dotted names or module objects (the names are the dictionary keys).
        detach: detach captured tensors (default); pass False to keep them in the graph
            (gradient-based methods such as Grad-CAM).
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerRef], detach: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if isinstance(layers, (str, nn.Module)) or not isinstance(layers, Iterable):
            raise TypeError("layers: expected a list of layer names or modules")
        resolved = [resolve_layer(model, layer) for layer in layers]
        if not resolved:
            raise ValueError("layers: expected at least one layer, got an empty list")
        self.model = model
        self.names = [name for name, _ in resolved]
        self._modules = [module for _, module in resolved]
        self.detach = detach
        self._clone = any(getattr(m, "inplace", False) for m in model.modules())

    @overload
    def __call__(
        self, x: torch.Tensor, return_output: Literal[False] = False
    ) -> dict[str, torch.Tensor]: ...

    @overload
    def __call__(
        self, x: torch.Tensor, return_output: Literal[True]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]: ...

    def __call__(
        self, x: torch.Tensor, return_output: bool = False
    ) -> Union[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]:
        captured: dict[str, torch.Tensor] = {}
        handles = []
        stop_early = not return_output

        def make_hook(name: str) -> Callable[[nn.Module, object, object], None]:
            def hook(_m: nn.Module, _inp: object, out: object) -> None:
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"layer {name!r} returned {type(out).__name__}, not a tensor")
                t = out.detach() if self.detach else out
                captured.setdefault(name, t.clone() if self._clone else t)
                if stop_early and len(captured) == len(self.names):
                    raise _StopForward

            return hook

        for name, module in zip(self.names, self._modules):
            handles.append(module.register_forward_hook(make_hook(name)))
        output: Optional[torch.Tensor] = None
        try:
            grad = torch.is_grad_enabled() and not self.detach
            with torch.set_grad_enabled(grad or (return_output and torch.is_grad_enabled())):
                output = self.model(x)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.names if n not in captured]
        if missing:
            raise RuntimeError(f"layers {missing} were not executed by the model's forward pass")
        result = {n: captured[n] for n in self.names}
        if return_output:
            assert output is not None  # forward ran to the end
            return result, output
        return result
