"""Demo step: a picture of the concept world and its class definitions."""

from __future__ import annotations

import json
from typing import Any

import torch
from PIL import Image

from pyconcepts.demo import DemoContext


def image_grid(images: torch.Tensor, n_cols: int = 8, scale: int = 2) -> Image.Image:
    """Tile float images ``[N,3,H,W]`` in [0,1] into one RGB picture."""
    n, _, h, w = images.shape
    n_rows = (n + n_cols - 1) // n_cols
    canvas = torch.ones(3, n_rows * (h + 2), n_cols * (w + 2))
    for i in range(n):
        r, c = divmod(i, n_cols)
        canvas[:, r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = images[i]
    array = (canvas.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    picture = Image.fromarray(array)
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def run(ctx: DemoContext) -> dict[str, Any]:
    world = ctx.train
    folder = ctx.step_dir("world")
    image_grid(world.image(slice(0, 32))).save(folder / "samples.png")
    (folder / "classes.json").write_text(json.dumps(world.class_concepts, indent=2))
    return {
        "images": len(world) + len(ctx.test),
        "classes": len(world.class_names),
        "concepts": len(world.concepts),
        "samples": str(folder / "samples.png"),
    }
