"""The argument rule, the result type and the Gram form of IBD's greedy basis
(:func:`pyconcepts.ops.greedy_nnls_basis`), shared with its twin and with the sharded basis of
:mod:`pyconcepts.distributed`."""

from __future__ import annotations

from typing import NamedTuple

import torch

from pyconcepts.opspec import checks as _checks


class BasisFit(NamedTuple):
    """Result of :func:`pyconcepts.ops.greedy_nnls_basis` for K targets and T terms.

    ``indices[k, t]`` is the candidate chosen at step t for target k; ``coefs[k]`` are the
    non-negative coefficients of the final T-term fit (in selection order; a chosen candidate
    may end with coefficient 0); ``residual_norms[k, t]`` is ‖target − fit‖ after t+1 terms.
    """

    indices: torch.Tensor
    coefs: torch.Tensor
    residual_norms: torch.Tensor


def check_basis_args(
    targets: torch.Tensor, candidates: torch.Tensor, max_terms: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validates :func:`greedy_nnls_basis`'s arguments (shared with the twin); returns them,
    ``max_terms`` as a Python int."""
    targets = _checks.tensor("targets", targets)
    candidates = _checks.tensor("candidates", candidates)
    _checks.ndim("targets", targets, 2, "[K, D]")
    _checks.ndim("candidates", candidates, 2, "[N, D]")
    _checks.floating("targets", targets)
    _checks.same_device_dtype([("targets", targets), ("candidates", candidates)])
    if targets.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"candidates: expected {targets.shape[1]} columns (as targets [K, D]), "
            f"got shape {tuple(candidates.shape)}"
        )
    max_terms = _checks.integer("max_terms", max_terms)
    if not 0 <= max_terms <= candidates.shape[0]:
        raise ValueError(
            f"max_terms: expected 0 <= max_terms <= {candidates.shape[0]} (the number of "
            f"candidates), got {max_terms}"
        )
    _checks.finite("targets", targets)
    _checks.finite("candidates", candidates)
    return targets, candidates, max_terms


def gram_form(
    targets: torch.Tensor, candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C Cᵀ, targets Cᵀ, ‖targets‖²)`` in float64: computed once, so the greedy search never
    touches D again."""
    c = candidates.detach().to(torch.float64)
    t = targets.detach().to(torch.float64)
    return (c @ c.T).contiguous(), (t @ c.T).contiguous(), (t * t).sum(1).contiguous()
