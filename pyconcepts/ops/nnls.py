"""Batched non-negative least squares and IBD's greedy NNLS basis selection.

Both ops solve in the Gram form (``G = AᵀA``, ``h = Aᵀb``) with Lawson–Hanson's active-set
method in double precision, whatever the input dtype, so that their results equal
``scipy.optimize.nnls`` problem by problem. The rounding rules (gradient tolerance, numerically
dependent columns) are described in ``csrc/common/nnls_gram.h`` and docs/methods.md (IBD).
"""

from __future__ import annotations

from typing import Optional

import torch

from pyconcepts import _backends
from pyconcepts.ops import _bridge
from pyconcepts.ops._dispatch import resolve_backend
from pyconcepts.opspec import checks as _checks
from pyconcepts.opspec.nnls import BasisFit, check_basis_args, gram_form

__all__ = ["BasisFit", "greedy_nnls_basis", "nnls"]


def _max_iter(max_iter: Optional[int], n: int) -> int:
    if max_iter is None:
        return 3 * n  # scipy.optimize.nnls's default
    value = _checks.integer("max_iter", max_iter)
    if value < 0:
        raise ValueError(f"max_iter: expected a non-negative int or None, got {max_iter!r}")
    return value


def _raise_on_info(info: torch.Tensor, batch_shape: torch.Size, max_iter: int) -> None:
    """Turn the kernels' per-problem status (1: iteration cap, 2: NaN/inf input) into errors;
    the kernels detect non-finite input from the Gram products, saving a pass over A."""
    bad = torch.nonzero(info != 0)
    if bad.numel() == 0:
        return
    flat = int(bad[0, 0])
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), batch_shape))
    if int(info[flat]) == 2:
        raise ValueError(
            f"A, b: expected finite values, got NaN or inf (first at batch index {where})"
        )
    raise RuntimeError(
        f"nnls: {bad.shape[0]} problem(s) did not converge within max_iter={max_iter} column "
        f"additions (first at batch index {where}); pass a larger max_iter, or check that A "
        "is not badly scaled or nearly rank-deficient"
    )


def nnls(
    A: torch.Tensor,
    b: torch.Tensor,
    *,
    max_iter: Optional[int] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``x = argmin_{x ≥ 0} ‖A x − b‖`` for every problem of a batch.

    A ``[..., m, n]`` and b ``[..., m]`` (same batch shape, dtype and device) give x
    ``[..., n]`` in A's dtype. ``max_iter`` caps the number of column additions per problem
    (default ``3n`` like scipy); exceeding it raises ``RuntimeError`` naming the problem.
    Rank-deficient A, zero columns and ``n > m`` give a minimiser (the objective is optimal;
    x is then one of several solutions); ``b = 0`` gives ``x = 0``; NaN/inf raise ValueError,
    and so does a solution beyond the dtype's range.
    Not differentiable: the result carries no gradient. On CUDA the convergence check
    synchronizes the stream.
    """
    A = _checks.tensor("A", A)
    b = _checks.tensor("b", b)
    if A.dim() < 2:
        raise ValueError(
            f"A: expected a tensor [..., m, n] with at least 2 dims, got {tuple(A.shape)}"
        )
    _checks.floating("A", A)
    _checks.same_device_dtype([("A", A), ("b", b)])
    if tuple(b.shape) != tuple(A.shape[:-1]):
        raise ValueError(
            f"b: expected shape {tuple(A.shape[:-1])} (A's shape without its last dim), "
            f"got {tuple(b.shape)}"
        )
    m, n = A.shape[-2], A.shape[-1]
    iters = _max_iter(max_iter, n)
    which = resolve_backend(A, backend)
    if which == "reference":
        from pyconcepts.reference.nnls import nnls as nnls_reference

        _checks.finite("A", A)
        _checks.finite("b", b)
        return _representable(nnls_reference(A, b, max_iter=iters), "A, b")
    batch_shape = A.shape[:-2]
    batch = batch_shape.numel()
    A3 = _bridge.dense(A.detach().reshape(batch, m, n))
    b2 = _bridge.dense(b.detach().reshape(batch, m))
    x = torch.empty(batch, n, dtype=A.dtype, device=A.device)
    info = torch.zeros(batch, dtype=torch.int32, device=A.device)
    if which == "cuda":
        core_cuda = _backends.core_cuda()
        assert core_cuda is not None
        n_d, n_i = core_cuda.nnls_workspace(n)
        ws_d = torch.empty(batch, n_d, dtype=torch.float64, device=A.device)
        ws_i = torch.empty(batch, n_i, dtype=torch.int32, device=A.device)
        _bridge.call(
            "nnls", A3, b2, x, info, ws_d, ws_i, batch, m, n, iters,
            dtype=A.dtype, device=A.device,
        )  # fmt: skip
    else:
        _bridge.call("nnls", A3, b2, x, info, batch, m, n, iters, dtype=A.dtype, device=A.device)
    _raise_on_info(info.cpu(), batch_shape, iters)
    return _representable(x.reshape(*batch_shape, n), "A, b")


def _representable(result: torch.Tensor, names: str) -> torch.Tensor:
    """``result`` if finite: with finite inputs a non-finite value means the exact solution
    lies beyond the dtype's range (e.g. nearly-subnormal float32 columns)."""
    if not bool(torch.isfinite(result).all()):
        raise ValueError(
            f"{names}: the solution exceeds the range of {result.dtype} (the columns are too "
            "small for the right-hand side); rescale them or pass float64"
        )
    return result


def greedy_nnls_basis(
    targets: torch.Tensor,
    candidates: torch.Tensor,
    max_terms: int,
    *,
    backend: Optional[str] = None,
) -> BasisFit:
    """IBD's greedy non-negative basis (Zhou et al. 2018, eq. 6) for every target row.

    For each target t_k ``[D]`` it adds, ``max_terms`` times, the candidate row c_j whose NNLS
    fit together with the already chosen ones leaves the smallest residual — the selection a
    plain loop over ``scipy.optimize.nnls`` makes (ties: the lower index; when no candidate
    improves the fit the lowest-index unchosen one is taken, with coefficient 0). Works in the
    Gram form (``C Cᵀ`` and ``targets Cᵀ`` computed once) so a trial costs O(T²), not O(D).
    CUDA builds at most 16 terms.
    """
    targets, candidates, max_terms = check_basis_args(targets, candidates, max_terms)
    which = resolve_backend(targets, backend)
    if which == "reference":
        from pyconcepts.reference.nnls import greedy_nnls_basis as greedy_reference

        fit = greedy_reference(targets, candidates, max_terms)
        _representable(torch.cat([fit.coefs, fit.residual_norms], 1), "targets, candidates")
        return fit
    G, H, tt = gram_form(targets, candidates)
    return greedy_basis_of_gram(G, H, tt, max_terms, targets.dtype, which)


def greedy_basis_of_gram(
    G: torch.Tensor,
    H: torch.Tensor,
    tt: torch.Tensor,
    max_terms: int,
    dtype: torch.dtype,
    which: str,
) -> BasisFit:
    """The compiled kernels' part of :func:`greedy_nnls_basis` (``which``: ``"cpu"`` or
    ``"cuda"``) on its :func:`gram_form`, results cast to ``dtype``. Each row of ``H``/``tt`` is
    solved on its own, so a block of rows gets exactly those rows' bases of the whole."""
    K, N, T = H.shape[0], G.shape[0], max_terms
    if which == "cuda":
        core_cuda = _backends.core_cuda()
        assert core_cuda is not None
        if T > core_cuda.greedy_max_terms:
            raise ValueError(
                f"max_terms: the CUDA kernel builds at most {core_cuda.greedy_max_terms} terms, "
                f"got {T}; use backend='cpu'"
            )
    device = H.device
    indices = torch.zeros(K, T, dtype=torch.int64, device=device)
    coefs = torch.zeros(K, T, dtype=torch.float64, device=device)
    res = torch.zeros(K, T, dtype=torch.float64, device=device)
    _bridge.call(
        "greedy_nnls_basis", G, H.contiguous(), tt.contiguous(), indices, coefs, res, K, N, T,
        dtype=torch.float64, device=device,
    )  # fmt: skip
    fit = BasisFit(indices, coefs.to(dtype), res.to(dtype))
    _representable(torch.cat([fit.coefs, fit.residual_norms], 1), "targets, candidates")
    return fit
