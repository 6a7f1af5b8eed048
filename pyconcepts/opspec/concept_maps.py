"""Result type of :func:`pyconcepts.ops.concept_map_stats` and its twin."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ConceptMapStats(NamedTuple):
    """Per image and concept map, each ``[B, M]`` in the input dtype."""

    max: torch.Tensor
    mean: torch.Tensor
    frac_above: torch.Tensor
