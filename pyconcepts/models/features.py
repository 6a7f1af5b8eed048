"""FeatureExtractor: named intermediate activations of any torch model, via forward hooks.

A layer is addressed by the dotted name of its module, with two optional suffixes:

- ``"name@k"``: the k-th call (0-based) of a module that runs several times per forward pass
  (EfficientNet's blocks share one activation module, which therefore runs twice per block);
  a plain ``"name"`` of such a module is refused, since it would be ambiguous.
- ``"name:input"``: the module's first positional input instead of its output, e.g. the
  vector a classifier receives (``"_fc:input"``); ``"name@k:input"`` combines both.

Hooks live only for the duration of one call (no hooks are left on the model, which is what
leaks memory in long batch runs). Outputs of layers followed by in-place operations are cloned
so later in-place ReLUs cannot change them; inputs are taken before the module runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union, overload

import torch
from torch import nn

LayerRef = Union[str, nn.Module]

LAYER_SYNTAX = (
    "'name' (a module's output), 'name@k' (its k-th call, 0-based, for a module that runs "
    "several times per forward pass), 'name:input' or 'name@k:input' (its first positional input)"
)
_INPUT = ":input"


@dataclass(frozen=True)
class LayerAddress:
    """One parsed layer reference.

    Attributes:
        name: the module's dotted name.
        module: the module itself.
        call: which call to read (0-based); None for a module expected to run exactly once.
        port: ``"output"`` or ``"input"`` (the first positional argument).
    """

    name: str
    module: nn.Module
    call: Optional[int] = None
    port: Literal["output", "input"] = "output"

    @property
    def key(self) -> str:
        """The canonical string form, e.g. ``"_swish@1"`` or ``"_fc:input"``."""
        call = "" if self.call is None else f"@{self.call}"
        return f"{self.name}{call}{_INPUT if self.port == 'input' else ''}"


def parse_layer(model: nn.Module, layer: LayerRef) -> LayerAddress:
    """The :class:`LayerAddress` of ``layer``: a module object, or a string in the syntax of
    this module's docstring (a module name containing ``@`` or ``:`` is taken literally)."""
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer and name:
                return LayerAddress(name, module)
        raise ValueError(f"layer: the given {type(layer).__name__} module is not part of the model")
    if not isinstance(layer, str):
        raise TypeError(
            f"layer: expected a dotted name or an nn.Module, got {type(layer).__name__}"
        )
    if layer in named and layer != "":
        return LayerAddress(layer, named[layer])
    name, port = layer, "output"
    if name.endswith(_INPUT):
        name, port = name[: -len(_INPUT)], "input"
    call: Optional[int] = None
    base, at, index = name.rpartition("@")
    if at:
        if not index.isdigit():
            raise ValueError(
                f"layer: {layer!r} has '@{index}'; expected '@k' with k a call index (0, 1, ...). "
                f"Layers are given as {LAYER_SYNTAX}"
            )
        name, call = base, int(index)
    if name in named and name != "":
        return LayerAddress(name, named[name], call, port)  # type: ignore[arg-type]
    names = [n for n in named if n]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {close}?" if close else ""
    shown = names if len(names) <= 40 else [*names[:40], f"... ({len(names) - 40} more)"]
    raise ValueError(
        f"layer: no layer named {name!r} in the model{hint} Layers are given as {LAYER_SYNTAX}. "
        f"Available: {shown}"
    )


def resolve_layer(model: nn.Module, layer: LayerRef) -> tuple[str, nn.Module]:
    """``(canonical name, module)`` for a layer given by module object or by name in the syntax
    of this module's docstring (``"features.relu4"``, ``"_swish@1"``, ``"_fc:input"``)."""
    address = parse_layer(model, layer)
    return address.key, address.module


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass once every requested layer is captured."""


class FeatureExtractor:
    """Capture the outputs (or inputs) of ``layers`` of ``model`` for a batch of inputs.

    >>> fx = FeatureExtractor(model, ["features.relu4", "fc1"])     # doctest: +SKIP
    >>> feats = fx(images)                  # {"features.relu4": [B,128,8,8], "fc1": [B,256]}
    >>> feats, logits = fx(images, return_output=True)
    >>> FeatureExtractor(effnet, ["_swish@1", "_fc:input"])(images)  # doctest: +SKIP

    The forward pass stops as soon as everything is captured when every layer names its call
    (``@k``) and the output is not requested; a plain name needs the whole pass, to check that
    its module runs only once.

    Args:
        model: any ``nn.Module``.
        layers: module objects or names (see the module docstring for ``@k`` and ``:input``);
            the canonical names are the dictionary keys (:attr:`names`).
        detach: detach captured tensors (default); pass False to keep them in the graph
            (gradient-based methods such as Grad-CAM).
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerRef], detach: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if isinstance(layers, (str, nn.Module)) or not isinstance(layers, Iterable):
            raise TypeError("layers: expected a list of layer names or modules")
        addresses = [parse_layer(model, layer) for layer in layers]
        if not addresses:
            raise ValueError("layers: expected at least one layer, got an empty list")
        self.model = model
        self._addresses = addresses
        self.names = [a.key for a in addresses]
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
        calls: dict[int, int] = {}  # id(module) -> calls started so far
        stop_early = not return_output and all(a.call is not None for a in self._addresses)
        wanted = set(self.names)
        by_module: dict[int, list[LayerAddress]] = {}
        for a in self._addresses:
            by_module.setdefault(id(a.module), []).append(a)

        def keep(a: LayerAddress, value: object) -> None:
            if not isinstance(value, torch.Tensor):
                kind = type(value).__name__
                raise TypeError(f"layer {a.key!r}: the module's {a.port} is {kind}, not a tensor")
            t = value.detach() if self.detach else value
            captured[a.key] = t.clone() if self._clone else t
            if stop_early and wanted.issubset(captured):
                raise _StopForward

        def make_hooks(group: list[LayerAddress]) -> tuple[Callable[..., None], ...]:
            def pre_hook(m: nn.Module, args: tuple[Any, ...]) -> None:
                call = calls[id(m)] = calls.get(id(m), 0) + 1
                for a in group:
                    if a.port == "input" and (a.call or 0) == call - 1:
                        keep(a, args[0] if args else None)

            def hook(m: nn.Module, _args: object, out: object) -> None:
                for a in group:
                    if a.port == "output" and (a.call or 0) == calls[id(m)] - 1:
                        keep(a, out)

            return pre_hook, hook

        handles = []
        for group in by_module.values():
            pre_hook, hook = make_hooks(group)
            handles.append(group[0].module.register_forward_pre_hook(pre_hook))
            handles.append(group[0].module.register_forward_hook(hook))
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
        self._check_calls(calls, captured)
        result = {n: captured[n] for n in self.names}
        if return_output:
            assert output is not None  # forward ran to the end
            return result, output
        return result

    def _check_calls(self, calls: dict[int, int], captured: dict[str, torch.Tensor]) -> None:
        """Refuse ambiguous plain names and report layers that did not run (often enough)."""
        for a in self._addresses:
            n = calls.get(id(a.module), 0)
            suffix = _INPUT if a.port == "input" else ""
            if a.call is None and n > 1:
                raise ValueError(
                    f"layer: {a.name!r} ran {n} times in one forward pass; name the call: "
                    f"'{a.name}@0{suffix}' ... '{a.name}@{n - 1}{suffix}'"
                )
            if n == 0:
                raise RuntimeError(f"layer {a.key!r} was not executed by the model's forward pass")
            if a.key not in captured:
                raise ValueError(
                    f"layer: {a.key!r} asks for call {a.call} (0-based), but {a.name!r} ran "
                    f"{n} time(s) in one forward pass"
                )
