"""nnls and greedy_nnls_basis: kernel vs reference twin vs scipy.optimize.nnls (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import nnls as scipy_nnls

from pyconcepts import _backends
from pyconcepts.ops import BasisFit, greedy_nnls_basis, nnls
from pyconcepts.reference import nnls as reference

BACKENDS = ["cpu", "reference"]
needs_cuda = pytest.mark.skipif(not _backends.cuda_usable(), reason="no CUDA device")


def scipy_batch(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    A64, b64 = A.double().reshape(-1, *A.shape[-2:]).numpy(), b.double().reshape(-1, A.shape[-2])
    xs = [scipy_nnls(A64[i], b64[i].numpy())[0] for i in range(A64.shape[0])]
    return torch.tensor(np.stack(xs) if xs else np.zeros((0, A.shape[-1]))).reshape(
        *A.shape[:-2], A.shape[-1]
    )


def objective(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (A.double() @ x.double()[..., None])[..., 0].sub(b.double()).norm(dim=-1)


def scipy_greedy(targets: np.ndarray, cands: np.ndarray, T: int) -> tuple[np.ndarray, ...]:
    """The obvious implementation of IBD eq. 6: a plain loop over scipy.optimize.nnls.

    Also returns ``decided[k, t]``: the step's winner beat the runner-up by more than rounding
    (where it did not, the choice between exact ties is decided by rounding noise)."""
    K = targets.shape[0]
    idx, coef, res = np.zeros((K, T), np.int64), np.zeros((K, T)), np.zeros((K, T))
    decided = np.ones((K, T), dtype=bool)
    for k in range(K):
        chosen: list[int] = []
        x = np.zeros(0)
        for t in range(T):
            trials = []
            for j in range(cands.shape[0]):
                if j not in chosen:
                    xj, r = scipy_nnls(cands[[*chosen, j]].T, targets[k])
                    trials.append((r, j, xj))
            trials.sort(key=lambda item: (item[0], item[1]))
            r, j, x = trials[0]
            if len(trials) > 1:
                decided[k, t] = trials[1][0] - r > 1e-9 * (1 + np.linalg.norm(targets[k]))
            chosen.append(j)
            res[k, t] = r
        idx[k], coef[k] = chosen, x
    return idx, coef, res, np.cumprod(decided, 1).astype(bool)


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    batch = draw(st.integers(0, 4))
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, m, n, generator=g, dtype=torch.float64)
    b = torch.randn(batch, m, generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # b inside the cone of A's columns: many exact zeros/positives
        b = (A @ torch.rand(batch, n, 1, generator=g, dtype=torch.float64))[..., 0]
    return A, b


# float32 problems are the float64 ones rounded to float32; scipy solves that rounded problem in
# float64, as the kernels do (Gram form in double), so only the final cast to float32 differs.
DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: 1e-9, torch.float32: 2e-6}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(problems())
def test_nnls_matches_scipy(
    backend: str, dtype: torch.dtype, prob: tuple[torch.Tensor, torch.Tensor]
) -> None:
    A, b = (t.to(dtype) for t in prob)
    x = nnls(A, b, backend=backend)
    xs = scipy_batch(A, b)
    assert x.shape == xs.shape and x.dtype == dtype and (x >= 0).all()
    # The objective always matches; x too where the solution is unique (full column rank).
    # float32 rounding of x moves the objective by ~eps·|A|·|x|: scale by both.
    size = float(b.abs().max()) + float(A.abs().max()) * float(xs.abs().max()) if b.numel() else 0
    tol = TOL[dtype] * (1 + size)
    assert torch.allclose(objective(A, b, x), objective(A, b, xs), rtol=TOL[dtype], atol=tol)
    if A.shape[0] and A.shape[-2] >= A.shape[-1]:
        full = torch.linalg.matrix_rank(A.double()) == A.shape[-1]
        cond = torch.linalg.cond(A.double())
        ok = full & (cond < 1e4)
        scale = 1 + float(xs.abs().max())
        assert torch.allclose(x[ok].double(), xs[ok], rtol=1e-6, atol=TOL[dtype] * scale)


@st.composite
def nearly_parallel(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """One problem whose column j is column i scaled by 1 + δ plus a tiny part of its own
    (δ down to 1e-8): within the Gram form's rank tolerance of each other, yet not the same."""
    m, n = draw(st.integers(1, 8)), draw(st.integers(2, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    A = torch.randn(m, n, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1, 1e3]))
    b = torch.randn(m, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1, 10]))
    for _ in range(draw(st.integers(1, 2))):
        i, j = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        delta = draw(st.sampled_from([1e-4, 1e-5, 1e-6, 1e-7, 1e-8]))
        noise = draw(st.sampled_from([0.0, 1e-7, 1e-6]))
        A[:, j] = A[:, i] * (1 + delta) + noise * torch.randn(m, generator=g, dtype=torch.float64)
    return A, b


@pytest.mark.parametrize("backend", BACKENDS)
@given(nearly_parallel())
def test_nnls_trades_a_column_for_its_near_twin(
    backend: str, prob: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Nearly parallel columns: the KKT conditions hold to the fuzz harness's bound and the
    objective is scipy's to 1e-6 of |b|^2 (before swap_in, ~1 % of such problems kept a column
    out that would lower the residual: docs/reliability.md, finding 5)."""
    A, b = prob
    x = nnls(A, b, backend=backend)
    assert (x >= 0).all()
    r = b - A @ x
    w = A.T @ r  # KKT: <= 0 on the zero set, ~0 on the positive set, to its rounding
    scale = A.abs().T @ (b.abs() + A.abs() @ x.abs())
    assert bool((torch.where(x > 0, w.abs(), w) <= 1e-8 * (1 + scale)).all()), (x, w)
    xs = torch.from_numpy(scipy_nnls(A.numpy(), b.numpy())[0])
    assert float(r @ r) <= float(objective(A, b, xs)) ** 2 + 1e-6 * float(b @ b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 64, 16), (2, 200, 7), (2, 1, 1)])
def test_nnls_float32_and_batch_dims(backend: str, shape: tuple[int, int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(*shape, generator=g)
    b = torch.randn(shape[0], shape[1], generator=g)
    x = nnls(A.reshape(1, *shape), b.reshape(1, *b.shape), backend=backend)
    assert x.dtype == torch.float32 and x.shape == (1, shape[0], shape[2])
    xs = scipy_batch(A, b).float()
    assert torch.allclose(x[0], xs, rtol=1e-5, atol=1e-5)


def test_nnls_non_contiguous_and_kernel_equals_reference() -> None:
    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 16, 30, generator=g, dtype=torch.float64).transpose(1, 2)  # [5, 30, 16]
    b = torch.randn(5, 60, generator=g, dtype=torch.float64)[:, ::2]
    assert not A.is_contiguous() and not b.is_contiguous()
    x = nnls(A, b)
    assert torch.allclose(x, reference.nnls(A, b), rtol=1e-9, atol=1e-12)
    assert torch.allclose(x, scipy_batch(A, b), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nnls_degenerate(backend: str) -> None:
    g = torch.Generator().manual_seed(2)
    A = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    # b = 0 -> x = 0
    assert (nnls(A, torch.zeros(6, dtype=torch.float64), backend=backend) == 0).all()
    # zero column -> its coefficient is 0, the others as without it
    Az = A.clone()
    Az[:, 2] = 0
    x = nnls(Az, b, backend=backend)
    assert x[2] == 0
    keep = [0, 1, 3]
    assert torch.allclose(x[keep], nnls(A[:, keep], b, backend=backend), atol=1e-12)
    # duplicated column (rank deficient): optimal objective, both copies share the weight
    Ad = torch.cat([A, A[:, :1]], 1)
    xd = nnls(Ad, b, backend=backend)
    assert torch.allclose(objective(Ad, b, xd), objective(A, b, nnls(A, b)), atol=1e-10)
    # n > m
    Aw = torch.randn(3, 9, generator=g, dtype=torch.float64)
    bw = torch.randn(3, generator=g, dtype=torch.float64)
    xw = nnls(Aw, bw, backend=backend)
    assert torch.allclose(objective(Aw, bw, xw), objective(Aw, bw, scipy_batch(Aw, bw)), atol=1e-9)
    # empty batch, m = 0 and n = 0
    assert nnls(torch.zeros(0, 3, 2), torch.zeros(0, 3), backend=backend).shape == (0, 2)
    assert (nnls(torch.zeros(0, 2), torch.zeros(0), backend=backend) == 0).all()
    assert nnls(torch.zeros(4, 0), torch.ones(4), backend=backend).shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nnls_iteration_cap_raises(backend: str) -> None:
    A = torch.eye(5, dtype=torch.float64)
    b = torch.ones(5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="max_iter=2"):
        nnls(A, b, max_iter=2, backend=backend)
    assert torch.allclose(nnls(A, b, max_iter=5, backend=backend), b)


def test_nnls_bad_inputs() -> None:
    A = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"A: expected a torch\.Tensor"):
        nnls(A.numpy(), torch.randn(4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="b: expected shape"):
        nnls(A, torch.randn(3))
    with pytest.raises(ValueError, match="at least 2 dims"):
        nnls(torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="floating-point"):
        nnls(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        nnls(A, torch.randn(4, dtype=torch.float64))
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="NaN"):
            nnls(A, torch.tensor([1.0, float("nan"), 0.0, 0.0]), backend=backend)
        with pytest.raises(ValueError, match="NaN or inf"):
            nnls(A.index_put((torch.tensor(2), torch.tensor(1)), torch.tensor(float("inf"))),
                 torch.ones(4), backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match="max_iter"):
        nnls(A, torch.randn(4), max_iter=-1)
    with pytest.raises(ValueError, match="backend"):
        nnls(A, torch.randn(4), backend="gpu")


# ---- greedy_nnls_basis ------------------------------------------------------------------------


@st.composite
def basis_problems(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    K = draw(st.integers(0, 3))
    N = draw(st.integers(1, 12))
    D = draw(st.integers(1, 10))
    T = draw(st.integers(0, min(N, 5)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    cands = torch.randn(N, D, generator=g, dtype=torch.float64)
    targets = torch.randn(K, D, generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # targets built from a few non-negative candidates, plus noise
        targets = torch.rand(K, N, generator=g, dtype=torch.float64).pow(4) @ cands
        targets += 0.05 * torch.randn(K, D, generator=g, dtype=torch.float64)
    return targets, cands, T


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(basis_problems())
def test_greedy_basis_matches_scipy_loop(
    backend: str, dtype: torch.dtype, prob: tuple[torch.Tensor, torch.Tensor, int]
) -> None:
    targets, cands, T = prob
    targets, cands = targets.to(dtype), cands.to(dtype)
    fit = greedy_nnls_basis(targets, cands, T, backend=backend)
    assert isinstance(fit, BasisFit) and fit.coefs.dtype == dtype
    idx, coef, res, decided = scipy_greedy(targets.double().numpy(), cands.double().numpy(), T)
    # Identical selections up to the first exact tie (after it the paths may differ; the
    # residuals still agree since tied candidates fit equally well).
    assert (fit.indices.numpy()[decided] == idx[decided]).all()
    # Squared residuals come from the Gram form ‖t‖² − ‖L⁻¹h‖²: absolute error ~ eps·‖t‖², so
    # compare them squared (a near-exact fit's norm reads ~1e-7·‖t‖, not 0).
    scale = 1 + (targets.double() ** 2).sum(1, keepdim=True).numpy()
    tol = (1e-10 if dtype == torch.float64 else 1e-5) * scale
    assert (np.abs(fit.residual_norms.double().numpy() ** 2 - res**2) <= tol).all()
    # Coefficients are unique where every step was decided and the chosen columns are
    # independent (else several minimisers share the residual).
    chosen_rank = torch.linalg.matrix_rank(cands.double()[fit.indices].transpose(1, 2))
    full = decided.all(1) & (chosen_rank == T).numpy()
    coef_tol = 1e-8 if dtype == torch.float64 else 2e-6 * (1 + np.abs(coef).max(initial=0))
    assert np.allclose(fit.coefs.double().numpy()[full], coef[full], rtol=1e-6, atol=coef_tol)


def test_greedy_basis_known_answer_and_ties() -> None:
    cands = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [-1, 0, 0]])
    target = torch.tensor([[3.0, 2, -1]])
    fit = greedy_nnls_basis(target, cands, 3)
    # e0 (index 0 beats its duplicate 2), then e1; then nothing helps: lowest unchosen index (2)
    assert fit.indices.tolist() == [[0, 1, 2]]
    assert torch.allclose(fit.coefs, torch.tensor([[3.0, 2.0, 0.0]]))
    assert torch.allclose(fit.residual_norms, torch.tensor([[np.sqrt(5.0), 1.0, 1.0]]).float())
    ref = reference.greedy_nnls_basis(target, cands, 2)
    assert ref.indices.tolist() == [[0, 1]]


def test_greedy_basis_float32_kernel_equals_reference() -> None:
    g = torch.Generator().manual_seed(3)
    cands = torch.nn.functional.normalize(torch.randn(40, 24, generator=g), dim=1)
    targets = torch.randn(6, 24, generator=g)
    fit = greedy_nnls_basis(targets, cands, 5)
    ref = reference.greedy_nnls_basis(targets, cands, 5)
    assert fit.coefs.dtype == torch.float32 and fit.indices.dtype == torch.int64
    assert torch.equal(fit.indices, ref.indices)
    assert torch.allclose(fit.coefs, ref.coefs, rtol=1e-5, atol=1e-6)
    idx, _, _, _ = scipy_greedy(targets.double().numpy(), cands.double().numpy(), 5)
    assert (fit.indices.numpy() == idx).all()


def test_greedy_basis_bad_inputs() -> None:
    t, c = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="targets: expected a 2-D"):
        greedy_nnls_basis(torch.randn(4), c, 2)
    with pytest.raises(ValueError, match="candidates: expected 4 columns"):
        greedy_nnls_basis(t, torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match="max_terms: expected 0 <= max_terms <= 5"):
        greedy_nnls_basis(t, c, 6)
    with pytest.raises(TypeError, match="max_terms: expected an int"):
        greedy_nnls_basis(t, c, 2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_terms: expected an int, got bool"):
        greedy_nnls_basis(t, c, True)
    with pytest.raises(ValueError, match="NaN"):
        greedy_nnls_basis(t, c.masked_fill(c > 1, float("inf")), 2)
    with pytest.raises(TypeError, match="dtype"):
        greedy_nnls_basis(t, c.double(), 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_integers_are_counts_too(backend: str) -> None:
    """max_terms and max_iter as numpy integers (what len() of an array or argmax gives)."""
    t, c = torch.randn(2, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    want = greedy_nnls_basis(t, c, 3, backend=backend)
    got = greedy_nnls_basis(t, c, np.int64(3), backend=backend)  # type: ignore[arg-type]
    assert torch.equal(got.indices, want.indices) and torch.equal(got.coefs, want.coefs)
    A, b = c.T, t[0]
    x = nnls(A, b, max_iter=np.int32(20), backend=backend)  # type: ignore[arg-type]
    assert torch.equal(x, nnls(A, b, max_iter=20, backend=backend))
    with pytest.raises(TypeError, match="max_iter: expected an int, got float"):
        nnls(A, b, max_iter=2.5, backend=backend)  # type: ignore[arg-type]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    A = torch.randn(300, 64, 16, generator=g, dtype=dtype)
    b = torch.randn(300, 64, generator=g, dtype=dtype)
    x_cpu = nnls(A, b)
    x_gpu = nnls(A.cuda(), b.cuda()).cpu()
    assert torch.allclose(x_gpu, x_cpu, rtol=1e-5, atol=1e-6)
    cands = torch.randn(200, 64, generator=g, dtype=dtype)
    targets = torch.randn(50, 64, generator=g, dtype=dtype)
    f_cpu = greedy_nnls_basis(targets, cands, 7)
    f_gpu = greedy_nnls_basis(targets.cuda(), cands.cuda(), 7)
    assert torch.equal(f_gpu.indices.cpu(), f_cpu.indices)
    assert torch.allclose(f_gpu.coefs.cpu(), f_cpu.coefs, rtol=1e-5, atol=1e-6)
