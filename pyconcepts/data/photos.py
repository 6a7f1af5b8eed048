"""Real photos for real models, offline: scikit-image's bundled colour photos (the
``[imagenet]`` extra), preprocessed by a model's own ``preprocess``.

Used by the real-model benchmark and tests: a small fit set made of the photos with shifted and
mirrored copies, and a two-object picture (chelsea the cat left, an espresso cup right) whose
halves tell whether a map lands on the explained object.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: the colour photos of scikit-image's wheel that load without a network
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel")  # fmt: skip


def photo(name: str) -> Any:
    """The ``H×W×3`` uint8 array of scikit-image's photo ``name``."""
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError(
            "the photos need scikit-image: pip install 'pyconcepts[imagenet]'"
        ) from exc
    if name not in PHOTOS:
        raise ValueError(f"name: expected one of {list(PHOTOS)}, got {name!r}")
    return getattr(skimage.data, name)()


def _preprocess(model: nn.Module, arrays: list[Any]) -> torch.Tensor:
    pre = getattr(model, "preprocess", None)
    if not callable(pre):
        raise TypeError("model: expected a model with a .preprocess (e.g. models.load(...))")
    out: torch.Tensor = pre(arrays)
    return out


def photo_batch(model: nn.Module, n: int) -> torch.Tensor:
    """``n`` preprocessed images: the photos, then shifted and mirrored copies of them."""
    if n < 1:
        raise ValueError(f"n: expected at least 1 image, got {n}")
    base = _preprocess(model, [photo(p) for p in PHOTOS])
    parts, shift = [base], 0
    while sum(len(p) for p in parts) < n:
        shift += 16
        view = torch.roll(base, shifts=(shift, -shift), dims=(2, 3))
        parts.append(view.flip(3) if len(parts) % 2 else view)
    return torch.cat(parts)[:n]


def cat_and_cup(model: nn.Module) -> torch.Tensor:
    """``[1, 3, H, W]``: chelsea squeezed into the left half, the espresso into the right."""
    cat, cup = _preprocess(model, [photo("chelsea"), photo("coffee")])
    h, w = cat.shape[-2:]
    halves = F.interpolate(torch.stack([cat, cup]), size=(h, w // 2), mode="bilinear")
    return torch.cat([halves[0], halves[1][..., : w - w // 2]], dim=-1)[None]


def left_half_mass(maps: torch.Tensor) -> float:
    """The share of a map's positive mass in its left half (0.5 for a uniform map)."""
    m = maps.detach().clamp_min(0).double()
    return float(m[..., : m.shape[-1] // 2].sum() / m.sum().clamp_min(1e-30))
