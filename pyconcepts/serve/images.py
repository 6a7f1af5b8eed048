"""Image bytes in and out of the service: PNG/JPEG → model input, heatmap → PNG overlay.

Decoding is where a small body costs the most memory (a 130 KB PNG can declare 4096 × 4096
16-bit RGBA pixels), so :func:`decode_image` judges the image from its header before decoding
any pixel: at most ``max_pixels`` (width × height). Pillow decodes 16-bit PNG samples straight
to 8 bits, and JPEGs are decoded at a reduced scale (libjpeg's DCT scaling, ``draft``) when
they are at least twice the input size in both dimensions. Measured peak (Pillow 13, per pixel
of the header's size, decoding and RGB conversion together): 8 bytes for PNG of any mode and
bit depth and for any JPEG decoded at a reduced scale; 12 bytes for a progressive CMYK JPEG
that cannot be reduced (its full-size coefficient buffers, 2 bytes per pixel and component,
come on top of the 8). So one decode holds at most ``12 × max_pixels`` bytes
(:data:`BYTES_PER_PIXEL`).
"""

from __future__ import annotations

import base64
import functools
import io
import re
from http import HTTPStatus

import numpy as np

from pyconcepts.serve.request import RequestError

BYTES_PER_PIXEL = 12  # measured worst case of decode + convert("RGB"): module docstring
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # reprs like <_io.BytesIO object at 0x..>


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes → float32 ``[1, 3, H, W]`` in [0, 1]: RGB, resized (bilinear) to
    ``size`` = (H, W). Raises :class:`RequestError` (400) for an empty, undecodable or larger
    than ``max_pixels`` image; the size is checked from the header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(HTTPStatus.BAD_REQUEST, "empty image: expected PNG or JPEG bytes")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"image: expected at most {max_pixels} pixels, got {width}×{height}",
                )
            if img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale if still ≥ size
                img.draft("RGB", (size[1], size[0]))
            rgb = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    except RequestError:
        raise
    except UnidentifiedImageError as exc:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "image: expected PNG or JPEG bytes, got an unknown format"
        ) from exc
    except Exception as exc:  # Pillow's decoders raise many types for bad input
        detail = _ADDRESS.sub("<image>", str(exc))
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"image: expected a valid PNG or JPEG, got undecodable bytes "
            f"({type(exc).__name__}: {detail})",
        ) from exc
    array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


@functools.lru_cache(maxsize=1)
def _jet() -> np.ndarray:
    from matplotlib import colormaps

    return np.asarray(colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3], dtype=np.float32)


def overlay_png(image: np.ndarray, heatmap: np.ndarray) -> str:
    """Base64 PNG of ``heatmap`` [H, W] (min-max scaled, jet colours) blended half-and-half
    over ``image`` [3, H, W] in [0, 1]."""
    from PIL import Image

    low, high = float(np.min(heatmap)), float(np.max(heatmap))
    scaled = (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)
    colour = _jet()[np.clip(np.round(scaled * 255), 0, 255).astype(np.intp)]
    blend = 0.5 * image.transpose(1, 2, 0) + 0.5 * colour
    buffer = io.BytesIO()
    Image.fromarray(np.round(blend * 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
