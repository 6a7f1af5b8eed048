"""Pure-torch twins of :mod:`pyconcepts.ops.nnls`: the same Lawson–Hanson active-set method,
run on the whole batch at once with masks, solving each passive-set least-squares problem with a
pseudo-inverse (so rank-deficient problems get a minimiser too)."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from pyconcepts.opspec.nnls import BasisFit, check_basis_args, gram_form

__all__ = ["greedy_nnls_basis", "nnls"]

_GRAD_TOL = 1024.0  # in units of the dtype's eps, like csrc/common/nnls_gram.h


def _lawson_hanson(
    grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    solve: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    max_iter: int,
    keep_last: bool = False,
) -> torch.Tensor:
    """Masked Lawson–Hanson on a batch ``[B, n]``. ``grad(x)`` returns the gradient
    ``Aᵀ(b − Ax)`` and its tolerance; ``solve(P)`` the least-squares solution on the passive
    mask P (zero elsewhere). Starts from ``x`` (zero, or a previous solution: ``x > 0`` is then
    the passive set and must be the least-squares solution on it). A problem that needs more
    than ``max_iter`` column additions raises, or with ``keep_last`` stops at its last iterate
    (as the greedy basis kernel does)."""
    B, n = x.shape
    passive = x > 0
    blocked = torch.zeros_like(passive)
    iters = torch.zeros(B, dtype=torch.int64, device=x.device)
    rows = torch.arange(B, device=x.device)
    while True:
        w, tol = grad(x)
        cand = ~passive & ~blocked & (w > tol)
        todo = cand.any(1)
        if not bool(todo.any()):
            return x
        iters += todo.long()
        over = iters > max_iter
        if bool(over.any()):
            if not keep_last:
                first = int(torch.nonzero(over)[0, 0])
                raise RuntimeError(
                    f"nnls: problem {first} did not converge within max_iter={max_iter} column "
                    "additions; pass a larger max_iter"
                )
            todo &= ~over
            if not bool(todo.any()):
                return x
        j = torch.where(cand, w, torch.full_like(w, -torch.inf)).argmax(1)
        passive[rows[todo], j[todo]] = True
        inner = todo.clone()
        first_pass = True
        while bool(inner.any()):
            s = solve(passive)
            if first_pass:  # Lawson–Hanson's test on the entering column
                reject = inner & ~(s[rows, j] > 0)
                passive[rows[reject], j[reject]] = False
                blocked[rows[reject], j[reject]] = True
                inner &= ~reject
                blocked[inner] = False
                first_pass = False
                continue
            bad = passive & ~(s > 0) & inner[:, None]
            has_bad = bad.any(1)
            done = inner & ~has_bad
            x[done] = s[done]
            inner &= has_bad
            if not bool(inner.any()):
                break
            ratio = torch.where(bad, x / (x - s), torch.full_like(x, torch.inf))
            alpha, kmin = ratio.min(1)
            step = inner[:, None]
            x = torch.where(step, x + alpha[:, None] * (s - x), x)
            drop = step & passive & ((x <= 0) | (torch.arange(n, device=x.device) == kmin[:, None]))
            x = torch.where(drop, torch.zeros_like(x), x)
            passive &= ~drop


def nnls(A: torch.Tensor, b: torch.Tensor, *, max_iter: Optional[int] = None) -> torch.Tensor:
    """Twin of :func:`pyconcepts.ops.nnls` (works on A directly, not on its Gram matrix; in
    float64 whatever the input dtype, as the kernels accumulate in double, then cast back)."""
    m, n = A.shape[-2], A.shape[-1]
    batch_shape = A.shape[:-2]
    A3 = A.detach().reshape(batch_shape.numel(), m, n).double()
    b2 = b.detach().reshape(batch_shape.numel(), m).double()
    eps = torch.finfo(torch.float64).eps
    col_norm = A3.norm(dim=1)  # [B, n]
    b_norm = b2.norm(dim=1, keepdim=True)

    def grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = b2 - (A3 @ x[:, :, None])[:, :, 0]
        w = (A3.transpose(1, 2) @ r[:, :, None])[:, :, 0]
        scale = b_norm + (col_norm * x).sum(1, keepdim=True)
        return w, _GRAD_TOL * eps * col_norm * scale

    def solve(passive: torch.Tensor) -> torch.Tensor:
        masked = A3 * passive[:, None, :]
        return (torch.linalg.pinv(masked) @ b2[:, :, None])[:, :, 0] * passive

    x = torch.zeros(A3.shape[0], n, dtype=torch.float64, device=A.device)
    iters = 3 * n if max_iter is None else max_iter
    return _lawson_hanson(grad, solve, x, iters).reshape(*batch_shape, n).to(A.dtype)


def _nnls_gram(
    G: torch.Tensor, h: torch.Tensor, tt: torch.Tensor, x0: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """NNLS from Gram blocks ``G [B, n, n]``, ``h [B, n]``, ``tt = ‖target‖² [B]``, starting
    from ``x0`` (default zero; see :func:`_lawson_hanson`). After 3n + 3 column additions (only
    reached when rounding makes it cycle) the last iterate is kept, as in the kernel."""
    eps = torch.finfo(G.dtype).eps
    diag = G.diagonal(dim1=1, dim2=2).clamp_min(0)

    def grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx = G * x[:, None, :]
        w = h - gx.sum(2)
        scale = (diag * tt[:, None]).sqrt() + gx.abs().sum(2)
        return w, _GRAD_TOL * eps * scale

    def solve(passive: torch.Tensor) -> torch.Tensor:
        # G[P,P] s = h[P] with identity rows outside P; singular blocks fall back to pinv.
        mask = passive[:, :, None] & passive[:, None, :]
        M = torch.where(mask, G, torch.diag_embed((~passive).to(G.dtype)))
        rhs = (h * passive)[:, :, None]
        s, info = torch.linalg.solve_ex(M, rhs)
        bad = info != 0
        if bool(bad.any()):
            s[bad] = torch.linalg.pinv(M[bad], hermitian=True) @ rhs[bad]
        return s[:, :, 0] * passive

    x = torch.zeros_like(h) if x0 is None else x0.clone()
    return _lawson_hanson(grad, solve, x, 3 * h.shape[1] + 3, keep_last=True)


def greedy_nnls_basis(
    targets: torch.Tensor, candidates: torch.Tensor, max_terms: int, *, chunk: int = 32
) -> BasisFit:
    """Twin of :func:`pyconcepts.ops.greedy_nnls_basis`: every (target, candidate) trial of a
    step is solved at once as a batch of small Gram-form NNLS problems (``chunk`` targets at a
    time), and the smallest residual wins (``argmin`` takes the lower index on ties). Like the
    kernel, a trial resumes Lawson–Hanson from the previous step's solution (the candidate at 0)
    and keeps that solution when it would end with a larger residual, so residuals never grow
    (docs/reliability.md, fuzzing finding 3)."""
    targets, candidates, max_terms = check_basis_args(targets, candidates, max_terms)
    G, H, tt = gram_form(targets, candidates)
    K, N, T = targets.shape[0], candidates.shape[0], max_terms
    indices = torch.zeros(K, T, dtype=torch.int64, device=targets.device)
    coefs = torch.zeros(K, T, dtype=torch.float64, device=targets.device)
    res = torch.zeros(K, T, dtype=torch.float64, device=targets.device)
    all_j = torch.arange(N, device=targets.device)
    for k0 in range(0, K, chunk):
        ks = torch.arange(k0, min(K, k0 + chunk), device=targets.device)
        kc = ks.shape[0]
        chosen = torch.zeros(kc, 0, dtype=torch.int64, device=targets.device)
        prev_x = torch.zeros(kc, 0, dtype=torch.float64, device=targets.device)
        prev_r2 = tt[ks]  # the fit before the first term: x = 0
        for t in range(T):
            taken = (chosen[:, :, None] == all_j).any(1)
            free = all_j.expand(kc, N)[~taken].reshape(kc, N - t)  # ascending per row
            n_free = N - t
            ids = torch.cat([chosen[:, None, :].expand(kc, n_free, t), free[..., None]], 2)
            Gs = G[ids[..., :, None], ids[..., None, :]].reshape(kc * n_free, t + 1, t + 1)
            hs = H[ks[:, None, None], ids].reshape(kc * n_free, t + 1)
            tts = tt[ks].repeat_interleave(n_free)
            zero = torch.zeros(kc, n_free, 1, dtype=torch.float64, device=targets.device)
            x0 = torch.cat([prev_x[:, None, :].expand(kc, n_free, t), zero], 2)
            x0 = x0.reshape(kc * n_free, t + 1)
            s = _nnls_gram(Gs, hs, tts, x0)
            r2 = tts - 2 * (hs * s).sum(1) + (s[:, None, :] @ Gs @ s[:, :, None]).flatten()
            before = prev_r2.repeat_interleave(n_free)
            worse = ~(r2 <= before)
            r2 = torch.where(worse, before, r2)
            s = torch.where(worse[:, None], x0, s)
            pick = r2.reshape(kc, n_free).argmin(1)
            rows = torch.arange(kc, device=targets.device)
            chosen = torch.cat([chosen, free[rows, pick][:, None]], 1)
            prev_x = s.reshape(kc, n_free, t + 1)[rows, pick]
            prev_r2 = r2.reshape(kc, n_free)[rows, pick]
            res[ks, t] = prev_r2.clamp_min(0).sqrt()
            if t == T - 1:
                coefs[ks] = prev_x
        indices[ks] = chosen
    return BasisFit(indices, coefs.to(targets.dtype), res.to(targets.dtype))
