"""Pictures for the report: de-normalised inputs, heatmap overlays and downscaled figures, each
as a ``data:`` URI so the report is one self-contained file."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

THUMB = 128  # side of an image / heatmap thumbnail, pixels
FIGURE_WIDTH = 720  # widest embedded figure, pixels


def to_rgb(
    image: torch.Tensor,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """``[3, H, W]`` model input → ``[H, W, 3]`` uint8, undoing ``(x − mean) / std`` when the
    model normalises its inputs (so the picture shows what the camera saw)."""
    x = image.detach().float().cpu()
    if std is not None:
        x = x * torch.tensor(std, dtype=x.dtype)[:, None, None]
    if mean is not None:
        x = x + torch.tensor(mean, dtype=x.dtype)[:, None, None]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def heat_rgb(
    heat: torch.Tensor, base: Optional[np.ndarray] = None, alpha: float = 0.55
) -> np.ndarray:
    """A non-negative ``[H, W]`` map, scaled to its own maximum, as a jet-coloured uint8 picture,
    blended over ``base`` (``[H, W, 3]`` uint8) when given."""
    import matplotlib

    h = heat.detach().float().cpu().clamp(min=0)
    peak = float(h.max())
    h = h / peak if peak > 0 else h
    colours = matplotlib.colormaps["jet"](h.numpy())[..., :3]
    if base is None:
        return (colours * 255).round().astype(np.uint8)
    if base.shape[:2] != colours.shape[:2]:
        size = (colours.shape[1], colours.shape[0])
        base = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BILINEAR))
    blended = (1 - alpha) * base / 255.0 + alpha * colours
    return (blended.clip(0, 1) * 255).round().astype(np.uint8)


def array_uri(array: np.ndarray, side: int = THUMB) -> str:
    """A uint8 ``[H, W, 3]`` picture scaled so its longer side is ``side`` (nearest neighbour
    when enlarging, so pixels stay crisp), as a PNG data URI."""
    picture = Image.fromarray(array)
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    method = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return _png_uri(picture.resize(size, method))


def file_uri(path: Path, width: int = FIGURE_WIDTH) -> str:
    """An image file (a figure written by a method) no wider than ``width``, as a data URI:
    PNG with an adaptive 256-colour palette, which keeps plots sharp at a fraction of the size."""
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    if picture.width > width:
        height = max(1, round(picture.height * width / picture.width))
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    return _png_uri(picture.quantize(256, method=Image.Quantize.MEDIANCUT))


def _png_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
