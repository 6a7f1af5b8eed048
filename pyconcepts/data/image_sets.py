"""Image sets drawn by index from one tensor: AfI's probe and benchmark sets without copies.

A concept's probe set (images showing it) and benchmark set (images without it) overlap with
every other concept's. The command line's default for a 224 px model draws the 16 concepts'
sets from a concept world of 100 images: as separate tensors they held 1,270 images, 0.71 GiB
(twice that while it normalised them); as indices, the 100 images (57 MiB) and the one set in
use. ``pyconcepts explain --method afi --model efficientnet-lite0`` on 8 photos peaked at
4.81 GiB resident before and 4.22 GiB after (2026-12-07, the same scores; 2.58 GiB since AfI's
passes take 16 images).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Union, overload

import torch


class ImageSets(Sequence[torch.Tensor]):
    """A read-only list of image sets ``[n_m, C, H, W]``, each ``images[indices[m]]``, gathered
    when it is asked for: sets that share images share their memory, and a loop over the sets
    holds one at a time."""

    def __init__(self, images: torch.Tensor, indices: Sequence[torch.Tensor]) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"images: expected a [N, C, H, W] tensor, got {tuple(images.shape)}")
        self.images = images
        self.indices = [torch.as_tensor(i, dtype=torch.long).flatten() for i in indices]
        for m, idx in enumerate(self.indices):
            if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(images)):
                raise ValueError(
                    f"indices[{m}]: expected indices in [0, {len(images)}), "
                    f"got {int(idx.min())}..{int(idx.max())}"
                )

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, m: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, m: slice) -> list[torch.Tensor]: ...

    def __getitem__(self, m: Union[int, slice]) -> Union[torch.Tensor, list[torch.Tensor]]:
        if isinstance(m, slice):
            return [self[i] for i in range(len(self))[m]]
        return self.images[self.indices[m].to(self.images.device)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[m] for m in range(len(self)))
