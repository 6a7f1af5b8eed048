"""Uniform batching over the inputs explainers accept: tensors, (images, labels) pairs,
torch Datasets (e.g. ConceptWorld) and DataLoaders / iterables of batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

Data = Union[torch.Tensor, tuple, Dataset, Iterable]


def iter_batches(
    data: Any,
    batch_size: int = 64,
    device: Optional[torch.device] = None,
    max_images: Optional[int] = None,
) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Yield ``(images, labels)`` batches from any supported input (labels None when absent),
    the first ``max_images`` images only when given (every explainer's ``max_images``).

    Accepted: an image tensor ``[N,C,H,W]``; a pair ``(images, labels)`` of tensors; a
    ``Dataset`` whose items start with (image, label); an iterable of such batches.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images: expected an int >= 1 or None, got {max_images!r}")
    left = max_images
    if isinstance(data, torch.Tensor):
        batches: Iterable[Any] = ((b, None) for b in data.split(batch_size))
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        if not isinstance(labels, torch.Tensor) or labels.shape[:1] != images.shape[:1]:
            raise ValueError(
                "data: expected (images [N,...], labels [N]) tensors, got labels of "
                f"{type(labels).__name__} {getattr(labels, 'shape', '')}"
            )
        batches = zip(images.split(batch_size), labels.split(batch_size))
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        batches = DataLoader(data, batch_size=batch_size, shuffle=False)
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise TypeError(
            "data: expected a tensor, an (images, labels) pair, a Dataset or an iterable of "
            f"batches, got {type(data).__name__}"
        )
    for batch in batches:
        if isinstance(batch, torch.Tensor):
            images, labels = batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            images = batch[0]
            labels = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        else:
            raise TypeError(
                f"data: each batch must be a tensor or (images, labels, ...), got {type(batch)}"
            )
        if left is not None:
            if left <= 0:
                return
            images, labels = images[:left], None if labels is None else labels[:left]
            left -= images.shape[0]
        if device is not None:
            images = images.to(device)
            labels = None if labels is None else labels.to(device)
        yield images, labels
