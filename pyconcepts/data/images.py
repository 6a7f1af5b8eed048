"""Image files and encoded image bytes → model inputs: one decoding rule for the command line
and for dataset-scale runs (:mod:`pyconcepts.distributed`).

Images are read as RGB, resized to the explainer's input size (PIL's default resampling for
``resize``) — or, for a model whose preprocessing says so, resized on the short side and
centre-cropped (:func:`resize_and_crop`) — scaled to [0, 1] and optionally normalised per
channel with a mean and std.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch

if TYPE_CHECKING:
    import PIL.Image

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


def decode_image(
    source: ImageSource, size: tuple[int, int], short_side: Optional[int] = None
) -> np.ndarray:
    """One image (a file path or encoded PNG/JPEG bytes) as an RGB ``[H, W, 3]`` uint8 array of
    ``size = (H, W)``: resized to it, or with ``short_side`` resized on its short side and
    centre-cropped (:func:`resize_and_crop`). Raises ``ValueError`` naming the image when it
    cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    name = f"{len(source)} bytes" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as picture:
            rgb = picture.convert("RGB")
            if short_side is not None:
                return np.asarray(resize_and_crop(rgb, short_side, size))
            return np.asarray(rgb.resize((size[1], size[0])))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"image {name}: cannot be decoded: {exc}") from exc


def resize_and_crop(image: PIL.Image.Image, short_side: int, size: tuple[int, int]) -> Any:
    """``image`` resized (bilinear) so that its short side is ``short_side`` (neither side
    below it), then its centre ``size = (H, W)`` cropped: the usual ImageNet evaluation
    geometry."""
    from PIL import Image

    width, height = image.size
    scale = short_side / min(width, height)
    new_w = max(short_side, round(width * scale))
    new_h = max(short_side, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    crop_h, crop_w = size
    left, top = round((new_w - crop_w) / 2), round((new_h - crop_h) / 2)
    return image.crop((left, top, left + crop_w, top + crop_h))


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
