"""User concepts on disk: a folder of images with a mask per concept, for IBD's concept vectors,
AfI's probe sets and naming an explainer's units (network-dissection style).

The format, one sub-folder per concept::

    concepts/
      striped/                 # the concept's name is the folder's name
        img001.png             # an image showing the concept (PNG or JPEG, any size)
        img001.mask.png        # where: a greyscale PNG of the same size, non-zero = concept
        img002.jpg
        img002.mask.png
      red/
        ...

An image is an example of its folder's concept only: its masks of the other concepts are
empty (an image showing two concepts goes into both folders, with a mask in each). Images are
resized to one size (bilinear; masks nearest) and, when given, passed through the model's
preprocessing. ``write_concept_folder`` exports a small folder from the concept world, so the
format has a working example without shipping binary files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

from pyconcepts.data.image_sets import ImageSets
from pyconcepts.data.images import IMAGE_SUFFIXES
from pyconcepts.errors import LoadError

MASK_SUFFIX = ".mask.png"


@dataclass(frozen=True)
class ConceptData:
    """Images ``[N, 3, H, W]`` with concept masks ``[N, C, H, W]`` (bool) and the C names —
    what ``IBD.fit`` takes as ``(images, masks)`` with ``concept_names``."""

    images: torch.Tensor
    masks: torch.Tensor
    names: list[str]

    def probe_sets(self) -> tuple[ImageSets, ImageSets]:
        """Per concept, the images showing it and those that do not (AfI's probes and
        benchmarks), as index sets over ``images`` (no copies)."""
        shown = self.masks.flatten(2).any(2)  # [N, C]
        columns = range(len(self.names))
        return (
            ImageSets(self.images, [shown[:, c].nonzero().flatten() for c in columns]),
            ImageSets(self.images, [(~shown[:, c]).nonzero().flatten() for c in columns]),
        )


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for image in sorted(folder.iterdir()):
        name = image.name.lower()
        if name.endswith(MASK_SUFFIX) or not name.endswith(IMAGE_SUFFIXES):
            continue
        mask = image.with_name(image.name[: -len(image.suffix)] + MASK_SUFFIX)
        if not mask.is_file():
            raise LoadError(f"{image}: no mask {mask.name} beside it")
        pairs.append((image, mask))
    return pairs


def load_concept_folder(
    root: str | os.PathLike[str],
    size: tuple[int, int],
    preprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> ConceptData:
    """Read a concept folder (module docstring) at ``size`` = (H, W); ``preprocess`` maps the
    ``[N, 3, H, W]`` images in [0, 1] to the model's input (e.g. its normalisation)."""
    base = Path(root)
    if not base.is_dir():
        raise LoadError(f"{base}: not a folder of concept sub-folders")
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    if not folders:
        raise LoadError(f"{base}: no concept sub-folders (expected one folder per concept)")
    height, width = int(size[0]), int(size[1])
    images, masks = [], []
    for c, folder in enumerate(folders):
        pairs = _pairs(folder)
        if not pairs:
            raise LoadError(f"{folder}: no images with masks (*.png/*.jpg + *{MASK_SUFFIX})")
        for image_path, mask_path in pairs:
            try:
                with Image.open(image_path) as im:
                    rgb = im.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
                with Image.open(mask_path) as im:
                    mask = im.convert("L").resize((width, height), Image.Resampling.NEAREST)
            except OSError as exc:
                raise LoadError(f"{image_path}: cannot be read as an image: {exc}") from exc
            images.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
            full = torch.zeros(len(folders), height, width, dtype=torch.bool)
            full[c] = torch.from_numpy(np.asarray(mask) > 0)
            masks.append(full)
    x = torch.stack(images).float() / 255
    return ConceptData(x if preprocess is None else preprocess(x), torch.stack(masks),
                       [f.name for f in folders])  # fmt: skip


def write_concept_folder(world: Any, root: str | os.PathLike[str], per_concept: int = 8) -> Path:
    """Export ``per_concept`` images of each concept of a ConceptWorld (the first images that
    show it) with their masks, in the folder format above; returns ``root``."""
    out = Path(root)
    masks = world.concept_masks(slice(None))  # [N, C, H, W]
    shown = masks.flatten(2).any(2)
    for c, name in enumerate(world.concepts):
        folder = out / name.replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i in shown[:, c].nonzero().flatten()[:per_concept].tolist():
            pixels = (world.image(i).permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            Image.fromarray(pixels).save(folder / f"img{i:05d}.png")
            Image.fromarray(masks[i, c].numpy().astype(np.uint8) * 255).save(
                folder / f"img{i:05d}{MASK_SUFFIX}"
            )
    return out
