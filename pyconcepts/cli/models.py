"""``--model``, ``--mean``/``--std`` and ``--images``: any model and any folder of images.

``--model`` is a name that :func:`pyconcepts.models.load` knows (the zoo, ``cw-vgg`` /
``cw-resnet``, and whatever else it loads) or ``module:function`` — a function that returns an
``nn.Module`` (the current folder is importable). Images are read as RGB in [0, 1] —
resized on the short side and centre-cropped when the model's ``preprocess`` declares that
geometry (``resize`` and ``input_size``), else resized — and normalised with
``--mean``/``--std``, else with the model's own ``model.preprocess`` (a dict or object with
``mean`` and ``std``), else left as they are.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from pyconcepts.cli._common import UsageError
from pyconcepts.data.images import normalise

__all__ = ["add_model_options", "load_model", "normalise", "preprocessing", "read_images"]


def add_model_options(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument(
        "--model",
        help=f"a zoo name (cw-vgg, cw-resnet, …) or module:function returning an nn.Module "
        f"({default_help})",
    )
    for name, example in (("mean", "0.485,0.456,0.406"), ("std", "0.229,0.224,0.225")):
        parser.add_argument(
            f"--{name}",
            type=_floats,
            help=f"per-channel {name} the model normalises images with, e.g. {example} "
            "(default: the model's own preprocess, else none)",
        )


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def load_model(spec: str) -> Any:
    """The model ``spec`` names (see the module doc), in eval mode; one-line errors."""
    from torch import nn

    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"--model {spec}: {exc}") from None
        try:
            model = factory()
        except Exception as exc:
            raise UsageError(f"--model {spec}: calling {attr}() failed: {exc}") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"--model {spec}: {attr}() returned a {type(model).__name__}, "
                             "expected a torch nn.Module")  # fmt: skip
    else:
        from pyconcepts import models

        try:
            model = models.load(spec, progress=False)
        except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
            raise UsageError(f"--model {spec}: {exc}") from None
    return model.eval()


def preprocessing(
    model: Any, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
) -> tuple[Optional[list[float]], Optional[list[float]]]:
    """(mean, std) the model's inputs are normalised with: the options, else its own
    ``preprocess`` attribute, else (None, None)."""
    own = getattr(model, "preprocess", None)
    for name, given in (("mean", mean), ("std", std)):
        if given is None and own is not None:
            value = own.get(name) if isinstance(own, dict) else getattr(own, name, None)
            if name == "mean":
                mean = None if value is None else [float(v) for v in value]
            else:
                std = None if value is None else [float(v) for v in value]
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, 3):
            raise UsageError(f"--{name}: expected 1 or 3 values (per channel), got {len(values)}")
    if std is not None and any(v <= 0 for v in std):
        raise UsageError(f"--std: expected positive values, got {std}")
    return (None if mean is None else list(mean)), (None if std is None else list(std))


def short_side(model: Any, size: tuple[int, int]) -> Optional[int]:
    """The short side the model's own ``preprocess`` resizes photos to before centre-cropping
    them to ``size`` (e.g. 256 for a 224 ImageNet model), when it declares one for that size;
    else None (images are resized to ``size``)."""
    own = getattr(model, "preprocess", None)
    resize, declared = getattr(own, "resize", None), getattr(own, "input_size", None)
    if isinstance(resize, int) and declared is not None and tuple(declared) == tuple(size):
        return resize
    return None


def read_images(
    folder: str, size: tuple[int, int], option: str = "--images", model: Any = None
) -> Any:
    """The .png/.jpg files of ``folder`` (given as ``option``), sorted by name, as RGB
    ``[N, 3, H, W]`` in [0, 1] of ``size``: resized to it, or as ``model``'s own preprocessing
    does (:func:`short_side`)."""
    from pyconcepts.data.images import decode_image, image_files, to_batch

    if not Path(folder).is_dir():
        raise UsageError(f"{option} {folder}: no such folder")
    files = image_files(folder)
    if not files:
        raise UsageError(f"{option} {folder}: no .png/.jpg files")
    try:
        side = short_side(model, size)
        return to_batch([decode_image(f, size, side) for f in files])
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
