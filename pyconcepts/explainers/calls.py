"""How independent fits of items run: one after another in this process, or through a map
that spreads them (:func:`pyconcepts.distributed.ray_map` runs each as a Ray task). AfI's
per-class occluders and SRAE's parts of classes are such items; each depends on its own
arguments alone, so the map changes where it runs, not its result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

CallMap = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]
"""``(fn, argument tuples) -> [fn(*args) for each tuple]``, in order."""


def in_order(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The default :data:`CallMap`: the calls one after another, here."""
    return [fn(*args) for args in calls]
