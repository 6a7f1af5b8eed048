"""Image files and encoded image bytes → model inputs: one decoding rule for the command line
and for dataset-scale runs (:mod:`pyconcepts.distributed`).

Images are read as RGB, resized to the explainer's input size (PIL's default resampling for
``resize``), scaled to [0, 1] and optionally normalised per channel with a mean and std.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ImageSource = Union[str, Path, bytes]


def image_files(folder: Union[str, Path], recursive: bool = False) -> list[Path]:
    """The .png/.jpg/.jpeg files inside ``folder`` (and its subfolders when ``recursive``),
    sorted by path."""
    base = Path(folder)
    if not base.is_dir():
        raise ValueError(f"folder: expected a folder of images, got {str(base)!r} (no such folder)")
    found = base.rglob("*") if recursive else base.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def decode_image(source: ImageSource, size: tuple[int, int]) -> np.ndarray:
    """One image (a file path or encoded PNG/JPEG bytes) as an RGB ``[H, W, 3]`` uint8 array of
    ``size = (H, W)``. Raises ``ValueError`` naming the image when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    name = f"{len(source)} bytes" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as picture:
            return np.asarray(picture.convert("RGB").resize((size[1], size[0])))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"image {name}: cannot be decoded: {exc}") from exc


def to_batch(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 arrays → a float32 ``[N, 3, H, W]`` batch in [0, 1]."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def normalise(
    images: torch.Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
) -> torch.Tensor:
    """``(images − mean) / std`` per channel (either may be None)."""
    if mean is not None:
        images = images - images.new_tensor(list(mean))[:, None, None]
    if std is not None:
        images = images / images.new_tensor(list(std))[:, None, None]
    return images
