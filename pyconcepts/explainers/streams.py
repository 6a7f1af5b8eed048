"""One random stream per item, so what an item draws does not depend on its batch."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def item_streams(seed: int, ids: Iterable[int]) -> list[torch.Generator]:
    """A CPU generator per id (a class, an image's position in the data), seeded by ``seed``
    and the id: the draws of an item stay the same whichever items share its batch, and
    however the data is split into batches."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + int(i)) for i in ids]
