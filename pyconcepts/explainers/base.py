"""The explainer contract shared by MACE, SRAE, AfI, filter-pattern mining and IBD.

A subclass must:

* define ``method`` (a short name, e.g. ``"ibd"``) and ``onnx_outputs`` (output names of its
  ONNX graph, e.g. ``("logits", "concept_scores", "heatmaps")``);
* store its constructor arguments unchanged under attributes of the same name (scikit-learn
  style: the constructor learns nothing; ``get_config`` reads them back by signature);
* implement ``fit(data, ...) -> self`` that sets learned state in trailing-underscore
  attributes, ``explain(images, ...) -> Explanation``, ``_state() -> (tensors, json_state)``,
  ``_set_state(tensors, json_state)`` and ``_onnx_module() -> nn.Module`` (images → a tuple of
  tensors in ``onnx_outputs`` order, built from the pure-torch reference twins so that the graph
  uses standard ONNX ops only).

The base class gives them: ``NotFittedError`` checks, image validation with clear errors,
persistence (one safetensors file: tensors + JSON config/state, never pickle, atomic writes,
a model fingerprint to refuse loading onto a different architecture) and ONNX export.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import inspect
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

import torch
from torch import nn

from pyconcepts import persistence
from pyconcepts.data.concept_folder import ConceptData
from pyconcepts.errors import EmptyHeatmapWarning, LoadError, NotFittedError, OutOfMemoryError
from pyconcepts.explanation import Explanation
from pyconcepts.inputs import check_image_batch, parameter_dtype

E = TypeVar("E", bound="ConceptExplainer")


class ConceptExplainer(abc.ABC):
    """Base class of every explainer: fit → explain → save / load → export_onnx.

    Every subclass's ``fit`` and ``explain`` are wrapped (in ``__init_subclass__``): a ``fit``
    that fails or is interrupted (Ctrl-C, out of memory) restores the explainer's attributes and
    the model's train/eval modes to what they were before the call, so an explainer is never left
    half-fitted; running out of memory in either raises :class:`~pyconcepts.errors.OutOfMemoryError`
    naming the call; ``explain`` warns (:class:`~pyconcepts.errors.EmptyHeatmapWarning`) about
    images whose concept heatmaps are all zero.
    """

    method: ClassVar[str] = ""
    onnx_outputs: ClassVar[tuple[str, ...]] = ()
    _fitted_attr: ClassVar[str] = "n_features_in_"  # set by every fit (via _record_fit)

    model: nn.Module

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            cls.fit = _transactional_fit(cls.__dict__["fit"])  # type: ignore[method-assign]
        if "explain" in cls.__dict__:
            cls.explain = _guarded_explain(cls.__dict__["explain"])  # type: ignore[method-assign]

    # ---- configuration ---------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (except the model) as a JSON-able dict."""
        params = inspect.signature(type(self).__init__).parameters
        config = {}
        for name, p in params.items():
            if name in ("self", "model") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            value = getattr(self, name)
            config[name] = list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(config)
        except TypeError as exc:
            raise TypeError(
                f"{type(self).__name__}: constructor arguments must be JSON-able to save: {exc}"
            ) from exc
        return config

    def __repr__(self) -> str:
        """The constructor call, then (once fitted) the layers the explainer chose."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        chosen = {k: v for k, v in vars(self).items() if k.endswith("layer_") or k == "layers_"}
        found = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
        return f"{type(self).__name__}({args})" + (f"  # fitted: {found}" if found else "")

    # ---- the contract ------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self: E, data: Any) -> E:
        """Learn the explainer's state from ``data``; returns self."""

    @abc.abstractmethod
    def explain(self, images: torch.Tensor) -> Explanation:
        """Explain a batch of images ``[B,C,H,W]``."""

    @abc.abstractmethod
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Fitted state: (tensors, JSON-able values)."""

    @abc.abstractmethod
    def _set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore the fitted state written by ``_state``."""

    @abc.abstractmethod
    def _onnx_module(self) -> nn.Module:
        """A module mapping images to the tuple of ``onnx_outputs`` (reference ops only)."""

    # ---- helpers for subclasses ----------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, self._fitted_attr)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(...) or "
                f"{type(self).__name__}.load(path, model=...) first"
            )

    def _record_fit(self, images: torch.Tensor) -> None:
        """Remember the input layout seen at fit time (channels, dtype) for later checks."""
        self.n_features_in_ = int(images.shape[1])
        self.input_size_ = (int(images.shape[2]), int(images.shape[3]))

    def _check_images(self, images: Any, name: str = "images") -> torch.Tensor:
        """Validate a batch of images against what the explainer was fitted on; returns it cast
        to the model's parameter dtype (the rule shared with the ONNX path:
        :func:`pyconcepts.inputs.check_image_batch`)."""
        images = check_image_batch(images, parameter_dtype(self.model), name)
        if self.is_fitted and images.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{name}: expected {self.n_features_in_} channels (as at fit), "
                f"got {images.shape[1]}"
            )
        if self.is_fitted and tuple(images.shape[2:]) != tuple(self.input_size_):
            (h, w), (got_h, got_w) = self.input_size_, images.shape[2:]
            raise ValueError(
                f"{name}: expected images of height {h} and width {w} (as at fit), got height "
                f"{got_h} and width {got_w}; resize them, or fit on images of this size"
            )
        return images

    def _explain_outputs(
        self, images: torch.Tensor, targets: Optional[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Named outputs of the explain module — the one the ONNX export traces — for checked
        ``images`` and validated ``targets`` (None: the predictions), with the targets they
        explain."""
        with torch.no_grad():
            given = None if targets is None else targets.to(images.device)
            out = dict(zip(self.onnx_outputs, self._onnx_module()(images, given)))
        logits = out["logits"]
        return out, logits.argmax(1) if targets is None else targets.to(logits.device)

    def _model_device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ---- naming ----------------------------------------------------------------------------
    def name_concepts(
        self, data: ConceptData, threshold: float = 0.5, batch_size: int = 32
    ) -> dict[str, tuple[str, float]]:
        """Label each of the explainer's concepts with the user concept it fires on (network
        dissection, :func:`~pyconcepts.metrics.ground_truth.dissect`: each map binarised at
        ``threshold`` × its maximum, IoU with ``data``'s masks summed over the images). The
        maps are the heatmaps of ``data``'s images explained as every class the explainer
        knows, so each class's concepts are drawn. Returns concept name → (best user concept,
        IoU); concepts that never have a map are left out. The folder format:
        :mod:`pyconcepts.data.concept_folder`."""
        from pyconcepts.metrics.ground_truth import dissect

        self._check_fitted()
        state = vars(self)
        names: list[str] = state["concept_names_"]
        classes = state.get("classes_") or range(len(state["class_names_"]))
        iou = torch.zeros(len(names), len(data.names))
        drawn = torch.zeros(len(names), dtype=torch.bool)
        for k in classes:
            parts = [self.explain(x, targets=[int(k)] * len(x))  # type: ignore[call-arg]
                     for x in data.images.split(batch_size)]  # fmt: skip
            maps = [p.heatmaps for p in parts if p.heatmaps is not None]
            cols = [p.heatmap_concepts for p in parts if p.heatmap_concepts is not None]
            if len(maps) != len(parts) or len(cols) != len(parts):
                raise ValueError(
                    f"{type(self).__name__} has no per-concept heatmaps to name concepts by"
                )
            units = torch.cat(cols)
            ids = units[units >= 0].unique()  # class k's concepts: only its maps draw them
            iou[ids] = dissect(torch.cat(maps), units, data.masks, len(names), threshold)[ids]
            drawn[ids] = True
        return {names[int(i)]: (data.names[int(iou[i].argmax())], float(iou[i].max()))
                for i in drawn.nonzero().flatten()}  # fmt: skip

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save the fitted explainer to one file (safetensors + JSON); returns the path."""
        self._check_fitted()
        tensors, state = self._state()
        state = {**state, "n_features_in_": self.n_features_in_, "input_size_": self.input_size_}
        documents = {
            "method": self.method,
            "config": self.get_config(),
            "state": state,
            "model": model_fingerprint(self.model),
        }
        persistence.save_file(path, tensors, kind="explainer", documents=documents)
        return Path(path)

    @classmethod
    def load(cls: type[E], path: str | Path, model: nn.Module) -> E:
        """Load an explainer saved by :meth:`save` and attach it to ``model``."""
        tensors, docs = persistence.load_file(path, kind="explainer")
        if docs.get("method") != cls.method:
            raise LoadError(f"{path}: holds a {docs.get('method')!r} explainer, not {cls.method!r}")
        saved = docs.get("model", {})
        if not isinstance(saved, dict) or not isinstance(docs.get("config", {}), dict):
            raise LoadError(f"{path}: corrupt explainer documents (model/config not objects)")
        current = model_fingerprint(model)
        if saved.get("architecture") != current["architecture"]:
            raise ValueError(
                f"model: {path} was fitted on a different architecture than the given model"
            )
        if saved.get("weights") != current["weights"]:
            warnings.warn(
                f"{path} was fitted on the same architecture with other weights", stacklevel=2
            )
        try:
            explainer = cls(model, **docs["config"])  # type: ignore[call-arg]
            state = dict(docs["state"])
            explainer.n_features_in_ = int(state.pop("n_features_in_"))
            explainer.input_size_ = tuple(state.pop("input_size_"))
            explainer._set_state(tensors, state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise LoadError(f"{path}: incompatible explainer state: {exc}") from exc
        return explainer

    # ---- ONNX ----------------------------------------------------------------------------
    def export_onnx(
        self,
        path: str | Path,
        example_input: Optional[torch.Tensor] = None,
        opset: int = 18,
        dynamic_batch: bool = True,
        metadata: Optional[dict[str, str]] = None,
    ) -> Path:
        """Export model + explainer head as one ONNX graph (input ``images``, outputs
        ``onnx_outputs``); returns the path. See :mod:`pyconcepts.export`."""
        from pyconcepts.export.onnx import export_module

        self._check_fitted()
        if example_input is None:
            example_input = torch.rand(2, self.n_features_in_, *self.input_size_)
        example_input = self._check_images(example_input, "example_input")
        props = {
            "pyconcepts_method": self.method,
            "pyconcepts_config": json.dumps(self.get_config(), sort_keys=True),
            "pyconcepts_layer": str(getattr(self, "layer_", None) or getattr(self, "layer", "")),
            "pyconcepts_outputs": json.dumps(list(self.onnx_outputs)),
            "pyconcepts_concepts": json.dumps(list(getattr(self, "concept_names_", []))),
            "pyconcepts_classes": json.dumps(list(getattr(self, "class_names_", []))),
            **(metadata or {}),
        }
        return export_module(
            self._onnx_module(),
            path,
            example_input,
            output_names=self.onnx_outputs,
            opset=opset,
            dynamic_batch=dynamic_batch,
            metadata=props,
        )


_FIT_STATE = ("n_features_in_", "input_size_")


def _transactional_fit(fit: Callable[..., Any]) -> Callable[..., Any]:
    """``fit`` that starts from the unfitted input checks and, when it raises or is
    interrupted, puts back the explainer's attributes and the model's modes."""

    @functools.wraps(fit)
    def wrapper(self: ConceptExplainer, *args: Any, **kwargs: Any) -> Any:
        saved = dict(vars(self))
        modes = [(m, m.training) for m in self.model.modules()]
        for name in _FIT_STATE:  # a refit checks its data as a first fit does
            vars(self).pop(name, None)
        try:
            with _clean_oom(f"{type(self).__name__}.fit"):
                return fit(self, *args, **kwargs)
        except BaseException:
            vars(self).clear()
            vars(self).update(saved)
            for module, training in modes:
                module.training = training
            raise

    return wrapper


def _guarded_explain(explain: Callable[..., Any]) -> Callable[..., Any]:
    """``explain`` with out-of-memory errors made clean and all-zero heatmaps reported."""

    @functools.wraps(explain)
    def wrapper(self: ConceptExplainer, *args: Any, **kwargs: Any) -> Any:
        with _clean_oom(f"{type(self).__name__}.explain"):
            result = explain(self, *args, **kwargs)
        maps = getattr(result, "class_maps", None)
        if maps is None:
            maps = getattr(result, "heatmaps", None)
        if isinstance(maps, torch.Tensor) and maps.dim() > 1 and maps.numel():
            low, high = torch.aminmax(maps.flatten(1), dim=1)  # no [B, C·H·W] temporary
            empty = ((low == 0) & (high == 0)).nonzero().flatten().tolist()
            if empty:
                listed = ", ".join(map(str, empty[:8])) + (", ..." if len(empty) > 8 else "")
                warnings.warn(
                    f"{len(empty)} of {len(maps)} images ({listed}): the explained class's maps "
                    "are all zero (nothing at the explained layer supports the target); they stay "
                    "zero",
                    EmptyHeatmapWarning,
                    stacklevel=2,
                )
        return result

    return wrapper


@contextlib.contextmanager
def _clean_oom(call: str) -> Iterator[None]:
    """Turn torch's and Python's out-of-memory errors into one OutOfMemoryError."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        text = str(exc)
        if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (
            "can't allocate memory" in text or "out of memory" in text.lower()
        ):
            if isinstance(exc, OutOfMemoryError):
                raise
            raise OutOfMemoryError(
                f"{call} ran out of memory ({text.splitlines()[0] if text else type(exc).__name__}"
                "); the explainer is unchanged: retry with fewer images or a smaller batch_size"
            ) from exc
        raise


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """Hashes of a model's architecture (parameter/buffer names and shapes) and weights."""
    arch = hashlib.sha256()
    weights = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        arch.update(f"{name}:{tuple(t.shape)};".encode())
        if t.numel():
            stats = t.detach().double()
            weights.update(f"{float(stats.sum()):.6e},{float(stats.abs().sum()):.6e};".encode())
    return {"architecture": arch.hexdigest()[:16], "weights": weights.hexdigest()[:16]}


def class_names_of(model: nn.Module, n_classes: int, given: Optional[Sequence[str]]) -> list[str]:
    """Class names: given ones, else the zoo model's, else ``class_0``, ``class_1``, …"""
    if given is not None:
        if len(given) != n_classes:
            raise ValueError(f"class_names: expected {n_classes} names, got {len(given)}")
        return list(given)
    info = getattr(model, "zoo_info", None)
    if isinstance(info, dict) and len(info.get("class_names", [])) == n_classes:
        return list(info["class_names"])
    return [f"class_{i}" for i in range(n_classes)]
