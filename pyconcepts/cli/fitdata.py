"""What ``pyconcepts explain`` and ``pyconcepts export`` fit an explainer on.

- **A concept-world model** (its class names are the concept world's, e.g. ``cw-vgg``; a model
  without class names counts as one when it has as many outputs as the world has classes)
  fits by default on ``--n-fit`` concept-world images (1000): with their labels (MACE, SRAE,
  FilterPatterns), their masks (IBD) or their probe sets (AfI).
- **Any other model** (``efficientnet-lite0``, ``module:function``) fits on ``--fit-images
  DIR``, default the ``--images`` being explained, labelled by the model's own predictions —
  the classes these methods then explain. A fit on concept-world images would know only the
  classes the model predicts for them, and explain nothing else.
- **Concepts** (IBD's concept vectors, AfI's probe sets): ``--concepts DIR``, a concept folder
  (:mod:`pyconcepts.data.concept_folder`), else the concept world rendered at the image size
  (``--n-fit`` images; default 100 when that size is not the world's own 64 × 64, since each
  224 px image with its masks takes about 3 MB).
- Images are read at ``--image-size`` (default: the model's declared input size, its
  ``preprocess.input_size``, else the world's 64 × 64 for a concept-world model; another model
  needs the option) and normalised like the model's inputs (``--mean``/``--std``, else its
  ``preprocess``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Optional

from pyconcepts.cli._common import UsageError, positive_int
from pyconcepts.cli.models import normalise, read_images

WORLD_SIZE = (64, 64)  # the concept world's default image size, which its zoo models take
N_FIT_WORLD, N_FIT_RENDERED = 1000, 100
CONCEPT_METHODS = ("afi", "ibd")  # the methods that learn from concept masks or probe sets
FIT_OPTIONS = ("n_fit", "fit_images", "concepts", "image_size")  # what a loaded explainer skips


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """``--n-fit``, ``--fit-images``, ``--concepts`` and ``--image-size`` (module doc)."""
    parser.add_argument(
        "--n-fit", type=positive_int,
        help=f"concept-world images to fit on (default: {N_FIT_WORLD}; {N_FIT_RENDERED} when "
        "rendered at another size than its own)",
    )  # fmt: skip
    parser.add_argument(
        "--fit-images",
        help="folder of .png/.jpg images to fit on, labelled by the model's predictions "
        "(default: the concept world for a concept-world model, else the --images folder)",
    )
    parser.add_argument(
        "--concepts",
        help="concept folder (one sub-folder of images + .mask.png per concept) for IBD's "
        "concept vectors and AfI's probe sets (default: the concept world)",
    )
    parser.add_argument(
        "--image-size", type=pair,
        help="H,W images are resized to (default: the model's declared input size)",
    )  # fmt: skip


def pair(text: str) -> tuple[int, int]:
    """argparse type: ``H,W`` (or ``HxW``), two positive integers."""
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive H,W, got {text!r}")
    return h, w


@dataclass
class FitData:
    """The arguments of ``explainer.fit`` and a line that says what they are."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def is_concept_world_model(model: Any, size: tuple[int, int]) -> bool:
    """Whether ``model`` classifies the concept world's classes: by its class names when it
    has some, else by its number of outputs on an image of ``size``."""
    from pyconcepts.data.concept_world import DEFAULT_CLASSES

    names = (getattr(model, "zoo_info", None) or {}).get("class_names")
    if names is not None:
        return list(names) == list(DEFAULT_CLASSES)
    return _n_outputs(model, size) == len(DEFAULT_CLASSES)


def _device_of(model: Any) -> Any:
    """The device of the model's parameters (the CPU for a model without any)."""
    import torch

    return next(iter(model.parameters()), torch.empty(0)).device


def _n_outputs(model: Any, size: tuple[int, int]) -> Optional[int]:
    """The model's number of outputs on one blank image of ``size``; None if it fails there."""
    import torch

    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, *size, device=_device_of(model)))
    except Exception:  # e.g. a flattening model built for another size
        return None
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def image_size(args: argparse.Namespace, model: Any) -> tuple[tuple[int, int], bool]:
    """(the size images are read at, whether the model is a concept-world model)."""
    declared = getattr(getattr(model, "preprocess", None), "input_size", None)
    size = args.image_size or (tuple(int(v) for v in declared) if declared else None)
    world_model = is_concept_world_model(model, size or WORLD_SIZE)
    if size is None:
        if not world_model:
            raise UsageError(
                f"--image-size: needed for --model {args.model}: it declares no input size "
                "(model.preprocess.input_size) and does not classify the concept world"
            )
        size = WORLD_SIZE
    return (int(size[0]), int(size[1])), world_model


def fit_data(
    args: argparse.Namespace, explainer: Any, mean: Any, std: Any, images_folder: Optional[str]
) -> FitData:
    """What ``explainer.fit`` takes for ``args.method`` (module doc). ``images_folder``: the
    folder being explained (``--images``), the fit set's default for other models."""
    size, world_model = image_size(args, explainer.model)
    method = args.method
    if args.concepts and method not in CONCEPT_METHODS:
        raise UsageError(
            f"--concepts: --method {method} learns no concepts from masks; it is read by "
            f"{' and '.join(CONCEPT_METHODS)}"
        )
    if method == "ibd":
        if args.fit_images:
            raise UsageError(
                "--fit-images: IBD learns its concept vectors from images with concept masks: "
                "pass --concepts DIR (a concept folder), or nothing for the concept world"
            )
        data, text = _concepts(args, size, mean, std)
        return FitData((data,), {}, text)
    folder = args.fit_images or (None if world_model else images_folder)
    world = None
    if folder is not None:
        images = normalise(read_images(folder, size, "--fit-images", explainer.model), mean, std)
        text = f"the {len(images)} images of {folder} at {size[0]}x{size[1]}, labelled by the model"
        if method != "afi":
            return FitData((images,), {}, text)  # the explainer labels them by the model
        from pyconcepts.explainers.afi.occluders import predict  # AfI's labels: predictions

        on_device = images.to(_device_of(explainer.model))
        labels = predict(explainer.model, on_device, getattr(args, "batch_size", 64)).cpu()
    elif world_model:
        world = _world(args, size)
        x, labels = world.tensors()
        images, text = normalise(x, mean, std), f"{len(world)} concept-world images"
        if method != "afi":
            return FitData(((images, labels),), {}, f"{text} with their labels")
    else:
        raise UsageError(
            f"--model {args.model} does not classify the concept world: pass --fit-images DIR "
            "(images of the classes to explain) or --images DIR (then fitted on too)"
        )
    probes, about = _probes(args, explainer, size, mean, std, world)
    return FitData(((images, labels),), probes, f"{text}; probe sets: {about}")


def _n_fit(args: argparse.Namespace, size: tuple[int, int]) -> int:
    if args.n_fit is not None:
        return int(args.n_fit)
    return N_FIT_WORLD if size == WORLD_SIZE else N_FIT_RENDERED


def _world(args: argparse.Namespace, size: tuple[int, int]) -> Any:
    from pyconcepts.data import ConceptWorld

    return ConceptWorld(_n_fit(args, size), image_size=size, seed=args.seed)


def _concepts(
    args: argparse.Namespace, size: tuple[int, int], mean: Any, std: Any
) -> tuple[Any, str]:
    """(a ConceptData of normalised images with concept masks, a line saying what it is):
    ``--concepts``, else the concept world at ``size``."""
    from pyconcepts.data import ConceptData, load_concept_folder
    from pyconcepts.errors import LoadError

    if args.concepts:
        try:
            data = load_concept_folder(args.concepts, size, lambda x: normalise(x, mean, std))
        except LoadError as exc:
            raise UsageError(f"--concepts: {exc}") from None
        return data, f"{len(data.names)} concepts of {args.concepts} ({len(data.images)} images)"
    world = _world(args, size)
    every = slice(None)
    data = ConceptData(
        normalise(world.image(every), mean, std), world.concept_masks(every), list(world.concepts)
    )
    return data, f"{len(world)} concept-world images at {size[0]}x{size[1]}"


def _probes(
    args: argparse.Namespace, explainer: Any, size: tuple[int, int], mean: Any, std: Any,
    world: Any,
) -> tuple[dict[str, Any], str]:  # fmt: skip
    """(AfI's ``probes``, ``benchmarks`` and ``concept_names``, a line saying what they are):
    from ``--concepts``, else drawn from the concept world (``world``, or one rendered at
    ``size``) as AfI draws them from a world it is given, normalised."""
    from pyconcepts.data.image_sets import ImageSets
    from pyconcepts.explainers.afi.concepts import probe_sets

    if args.concepts:
        data, text = _concepts(args, size, mean, std)  # normalised as it is read
        probes, benchmarks = data.probe_sets()
        return {"probes": probes, "benchmarks": benchmarks, "concept_names": data.names}, text
    world = world if world is not None else _world(args, size)
    probes, benchmarks = probe_sets(world, explainer.n_probe, explainer.seed)
    images = normalise(probes.images, mean, std)  # probes and benchmarks draw on the same
    return {
        "probes": ImageSets(images, probes.indices),
        "benchmarks": ImageSets(images, benchmarks.indices),
        "concept_names": list(world.concepts),
    }, f"the concept world at {size[0]}x{size[1]}"
