"""Model zoo: small CNNs for the concept world, shipped trained, retrainable and cached.

``load("cw-vgg")`` — VGG-like (VGG-BN style): ``features`` (conv1…conv4, each with batch norm,
ReLU and max-pool; the last conv feature map is ``features.relu4``, 128×8×8 at 64 px, pooled to
4×4) → ``flatten`` → dense ``fc1`` (+ ``relu_fc1``) → ``fc2`` logits. MACE and SRAE explain its
first dense layer.

``load("cw-resnet")`` — ResNet-like: ``stem`` → ``layer1``…``layer3`` (basic residual blocks
with batch norm; ``layer3`` is 128×8×8 at 64 px) → ``pool`` (global average) → ``flatten`` →
linear ``fc``. Its class scores are linear in the pooled ``layer3`` features, which IBD needs.

``load`` takes the weights from ``$PYCONCEPTS_CACHE`` (default ``~/.cache/pyconcepts``), else
from the copies shipped in ``pyconcepts/models/weights/`` (trained by :func:`train` with the
entry's recipe: training is bit-for-bit deterministic on one machine, so they equal what a
first-use training there produces, and the demo runs in minutes from an empty cache), else
trains and caches. ``load(name, retrain=True)`` (``pyconcepts zoo --retrain``) trains again.
Every file carries the architecture, its version and the training recipe in its header; a
corrupt or incompatible file is reported and skipped, never silently used.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from pyconcepts import persistence
from pyconcepts.errors import LoadError

N_CLASSES = 10


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


def cw_vgg(n_classes: int = N_CLASSES, image_size: int | tuple[int, int] = 64) -> nn.Module:
    """The VGG-like concept-world CNN (untrained): VGG-BN style blocks, an (H/16)×(W/16) map
    before flatten (4×4 for the 64-pixel default); ``image_size`` is a side or (height, width)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    widths = (3, 16, 32, 64, 128)
    for i in range(1, 5):
        layers[f"conv{i}"] = _conv(widths[i - 1], widths[i])
        layers[f"bn{i}"] = nn.BatchNorm2d(widths[i])
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
    height, width = image_size if isinstance(image_size, tuple) else (image_size, image_size)
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(layers),
            flatten=nn.Flatten(),
            fc1=nn.Linear(128 * (height // 16) * (width // 16), 256),
            relu_fc1=nn.ReLU(),
            fc2=nn.Linear(256, n_classes),
        )
    )


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a (projected) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


def cw_resnet(n_classes: int = N_CLASSES, image_size: int | tuple[int, int] = 64) -> nn.Module:
    """The ResNet-like concept-world CNN (untrained); ``image_size`` only documents the input."""
    del image_size  # global pooling makes the network size-agnostic
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(3, 24, 3, 1, 1, bias=False),
                    bn=nn.BatchNorm2d(24),
                    relu=nn.ReLU(),
                    pool=nn.MaxPool2d(2),
                )
            ),
            layer1=BasicBlock(24, 32, 2),
            layer2=BasicBlock(32, 64, 1),
            layer3=BasicBlock(64, 128, 2),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(128, n_classes),
        )
    )


@dataclass(frozen=True)
class Recipe:
    """How a zoo model is trained; part of the cache key.

    Every epoch draws ``images_per_epoch`` fresh concept-world images (the world is procedural,
    so there is no fixed training set to overfit); the test set is seeded apart from them.
    Measured on 2 idle CPU cores (2026-11-26): cw-vgg, 36 epochs, about 3.5 min, test accuracy
    0.955; cw-resnet, 28 epochs, about 5 min, 0.981. Accuracy rises steeply in the last epochs
    of the one-cycle schedule (cw-vgg: 0.85 after a 14-epoch schedule, 0.93 after 28), so
    shorter recipes trade accuracy for time.
    """

    images_per_epoch: int = 4000
    epochs: int = 28
    n_test: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[..., nn.Module]
    version: int
    recipe: Recipe
    feature_layer: str  # the conv feature map explainers start from
    description: str


ZOO: dict[str, ZooEntry] = {
    "cw-vgg": ZooEntry(
        "cw-vgg", cw_vgg, 3, Recipe(epochs=36), "features.relu4",
        "VGG-like CNN for the concept world: 4 conv + fc1 + fc2",
    ),
    "cw-resnet": ZooEntry(
        "cw-resnet", cw_resnet, 3, Recipe(), "layer3",
        "ResNet-like CNN for the concept world: stem + 3 residual blocks + GAP + fc",
    ),
}  # fmt: skip


def cache_dir() -> Path:
    """``$PYCONCEPTS_CACHE`` or ``~/.cache/pyconcepts``."""
    return Path(os.environ.get("PYCONCEPTS_CACHE", Path.home() / ".cache" / "pyconcepts"))


def available() -> list[str]:
    return sorted(ZOO)


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        from pyconcepts.models.imagenet import IMAGENET_MODELS

        expected = [*available(), *IMAGENET_MODELS]
        raise ValueError(f"name: expected one of {expected}, got {name!r}")
    return ZOO[name]


def _cache_path(entry: ZooEntry) -> Path:
    return cache_dir() / f"{entry.name}-v{entry.version}.safetensors"


def _shipped_path(entry: ZooEntry) -> Path:
    """Where the package ships the entry's trained weights (the file may not exist)."""
    return Path(__file__).parent / "weights" / f"{entry.name}-v{entry.version}.safetensors"


def load(name: str, *, progress: bool = True, retrain: bool = False) -> nn.Module:
    """The trained zoo model ``name`` in eval mode: from the cache, else the shipped weights,
    else trained (and cached) now; ``retrain=True`` trains again and replaces the cache.

    The returned module has ``zoo_info`` (dict: name, feature layer, class names, test
    accuracy, recipe). Names in :data:`~pyconcepts.models.imagenet.IMAGENET_MODELS`
    (``"efficientnet-lite0"``) load a pretrained ImageNet CNN instead (the ``[imagenet]``
    extra; see :mod:`pyconcepts.models.imagenet`).
    """
    from pyconcepts.models.imagenet import IMAGENET_MODELS, load_imagenet

    if name in IMAGENET_MODELS:
        return load_imagenet(name)
    entry = _entry(name)
    path = _cache_path(entry)
    sources = [p for p in (path, _shipped_path(entry)) if p.exists() and not retrain]
    for i, source in enumerate(sources):
        try:
            return _load_cached(entry, source)
        except LoadError as exc:
            then = "loading the shipped weights of" if i + 1 < len(sources) else "retraining"
            warnings.warn(f"model weights unusable, {then} {name}: {exc}", stacklevel=2)
    model, info = train(name, progress=progress)
    persistence.save_file(path, model.state_dict(), kind="zoo-model", documents={"info": info})
    return model


def _expected_info(entry: ZooEntry) -> dict[str, object]:
    from pyconcepts.data.concept_world import WORLD_VERSION

    return {
        "name": entry.name,
        "version": entry.version,
        "recipe": asdict(entry.recipe),
        "world_version": WORLD_VERSION,
    }


def _load_cached(entry: ZooEntry, path: Path) -> nn.Module:
    tensors, docs = persistence.load_file(path, kind="zoo-model")
    info = docs.get("info", {})
    expected = _expected_info(entry)
    if any(info.get(k) != v for k, v in expected.items()):
        raise LoadError(
            f"{path}: trained for {info.get('name')}/{info.get('recipe')}, not {expected}"
        )
    model = entry.build()
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise LoadError(f"{path}: weights do not fit {entry.name}: {exc}") from exc
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise LoadError(f"{path}: weights contain NaN or inf")
    model.eval()
    model.zoo_info = info
    return model


def train(name: str, *, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train zoo model ``name`` from scratch on the concept world; returns (model, info)."""
    from pyconcepts.data.concept_world import ConceptWorld

    entry = _entry(name)
    r = entry.recipe
    torch.manual_seed(r.seed)
    test_world = ConceptWorld(r.n_test, seed=r.seed + 1_000_003)
    model = entry.build()
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    steps = r.epochs * ((r.images_per_epoch + r.batch_size - 1) // r.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(r.seed)
    bar = tqdm(total=steps, desc=f"training {name}", disable=not progress, leave=False)
    model.train()
    for epoch in range(r.epochs):
        x, y = ConceptWorld(r.images_per_epoch, seed=r.seed * 1000 + epoch).tensors()
        order = torch.randperm(len(x), generator=gen)
        for idx in order.split(r.batch_size):
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # mirror images: concepts persist
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    acc = accuracy(model, *test_world.tensors())
    info = {
        **_expected_info(entry),
        "feature_layer": entry.feature_layer,
        "class_names": list(test_world.class_names),
        "concepts": list(test_world.concepts),
        "test_accuracy": acc,
        "description": entry.description,
    }
    model.zoo_info = info  # type: ignore[assignment]
    return model, info


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256
) -> float:
    """Top-1 accuracy of ``model`` on ``images`` (evaluated in batches, no gradients)."""
    correct = 0
    for xb, yb in zip(images.split(batch), labels.split(batch)):
        correct += int((model(xb).argmax(1) == yb).sum())
    return correct / max(1, len(labels))


def info(name: str) -> Optional[dict]:
    """The info (accuracy, recipe…) of the weights ``load`` would use without training: the
    cached or else the shipped ones; None if neither is readable."""
    entry = _entry(name)
    for path in (_cache_path(entry), _shipped_path(entry)):
        if path.exists():
            try:
                return persistence.load_file(path, kind="zoo-model")[1].get("info")
            except LoadError:
                continue
    return None
