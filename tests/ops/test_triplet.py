"""Semi-hard triplet loss / mining: kernel vs reference twin vs a plain-Python rule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconcepts import _backends
from pyconcepts.ops import semihard_triplet_loss, semihard_triplets
from pyconcepts.reference import triplet as reference

BACKENDS = ["reference"] + (["cpu"] if _backends.core() is not None else [])


def oracle(emb: list[list[float]], labels: list[int], margin: float, squared: bool):
    """The FaceNet / TF-Addons rule, read literally: O(N³) loops over Python floats."""
    n = len(emb)

    def sq(i: int, j: int) -> float:
        return sum((x - y) ** 2 for x, y in zip(emb[i], emb[j]))

    dist = (lambda s: s) if squared else math.sqrt
    triplets, losses = [], []
    for a in range(n):
        negatives = [j for j in range(n) if labels[j] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [j for j in negatives if sq(a, j) > sq(a, p)]
            if farther:
                neg = min(farther, key=lambda j: (sq(a, j), j))
            else:
                neg = min(negatives, key=lambda j: (-sq(a, j), j))
            triplets.append((a, p, neg))
            losses.append(max(0.0, dist(sq(a, p)) - dist(sq(a, neg)) + margin))
    return triplets, (sum(losses) / len(losses) if losses else 0.0)


@st.composite
def grid_problem(draw):
    """Half-integer coordinates: every distance is exact in float32 and float64, and ties
    (equal distances, duplicate points) are frequent."""
    n = draw(st.integers(2, 18))
    q = draw(st.integers(1, 4))
    values = draw(st.lists(st.integers(-3, 3), min_size=n * q, max_size=n * q))
    labels = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    if len(set(labels)) < 2:
        labels[0] = labels[1] + 1
    emb = [[v / 2 for v in values[i * q : (i + 1) * q]] for i in range(n)]
    margin = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    return emb, labels, margin


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=60, deadline=None)
@given(problem=grid_problem(), squared=st.booleans())
def test_matches_plain_python_rule(backend, dtype, problem, squared):
    emb, labels, margin = problem
    want_triplets, want_loss = oracle(emb, labels, margin, squared)
    x = torch.tensor(emb, dtype=dtype)
    y = torch.tensor(labels)
    a, p, n = semihard_triplets(x, y, margin, squared, backend=backend)
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == want_triplets
    loss = semihard_triplet_loss(x, y, margin, squared, backend=backend)
    assert loss.dtype == dtype and loss.shape == ()
    assert loss.item() == pytest.approx(want_loss, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("squared", [True, False])
@settings(max_examples=30, deadline=None)
@given(problem=grid_problem())
def test_kernel_gradient_matches_reference_with_ties(problem, squared):
    if "cpu" not in BACKENDS:
        pytest.skip("compiled core not built")
    emb, labels, margin = problem
    y = torch.tensor(labels)
    grads = []
    for backend in ("cpu", "reference"):
        x = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
        semihard_triplet_loss(x, y, margin, squared, backend=backend).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("squared", [True, False])
def test_gradcheck(backend, squared):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(14, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.tensor([0, 1, 2] * 4 + [0, 1])
    assert torch.autograd.gradcheck(
        lambda e: semihard_triplet_loss(e, y, 1.0, squared, backend=backend), (x,)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference_on_a_larger_batch(dtype):
    if "cpu" not in BACKENDS:
        pytest.skip("compiled core not built")
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(400, 32, generator=gen), dim=1).to(dtype)
    y = torch.randint(0, 10, (400,), generator=gen)
    got = semihard_triplets(x, y, backend="cpu")
    want = semihard_triplets(x.double(), y, backend="reference")
    same = (got[2] == want[2]).double().mean().item()
    assert same == 1.0 if dtype == torch.float64 else same > 0.999  # float32 rounding near ties
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    la = semihard_triplet_loss(xa, y, backend="cpu")
    lb = semihard_triplet_loss(xb, y, backend="reference")
    la.backward()
    lb.backward()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert la.item() == pytest.approx(lb.item(), rel=tol)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=tol * 10, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(5, 30, dtype=torch.float64, generator=gen)
    x = base.T  # [30, 5], non-contiguous
    y = (torch.arange(60) % 3)[::2]
    assert not x.is_contiguous() and not y.is_contiguous()
    got = semihard_triplets(x, y, backend=backend)
    want = semihard_triplets(x.contiguous(), y.contiguous(), backend=backend)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_member_labels_have_no_pairs(backend):
    x = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    y = torch.tensor([7, 1, 1, 9])  # 7 and 9 have one member each
    a, p, n = semihard_triplets(x, y, backend=backend)
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == [(1, 2, 0), (2, 1, 0)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_positive_pairs_gives_zero_loss_and_gradient(backend):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    loss = semihard_triplet_loss(x, y, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert all(t.numel() == 0 for t in semihard_triplets(x, y, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs(backend):
    x = torch.randn(4, 3)
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="distinct labels"):
        semihard_triplet_loss(x, torch.zeros(4, dtype=torch.long), backend=backend)
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        semihard_triplet_loss(x[:1], y[:1], backend=backend)
    with pytest.raises(ValueError, match="finite"):
        semihard_triplet_loss(torch.full((4, 3), float("nan")), y, backend=backend)
    with pytest.raises(ValueError, match="device"):
        semihard_triplet_loss(x, y.to("meta"), backend=backend)
    with pytest.raises(ValueError, match="4 labels"):
        semihard_triplet_loss(x, y[:3], backend=backend)
    with pytest.raises(TypeError, match="integer"):
        semihard_triplet_loss(x, y.float(), backend=backend)
    with pytest.raises(ValueError, match=r"\[N, Q\]"):
        semihard_triplet_loss(x[0], y, backend=backend)
    with pytest.raises(TypeError, match="floating"):
        semihard_triplets(x.long(), y, backend=backend)
    with pytest.raises(ValueError, match="margin"):
        semihard_triplet_loss(x, y, margin=float("inf"), backend=backend)


def test_other_dtypes_use_the_reference():
    x = torch.randn(6, 2).bfloat16()
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    a, p, n = semihard_triplets(x, y)
    want = reference.semihard_triplets(x, y)
    assert all(torch.equal(g, w) for g, w in zip((a, p, n), want))


@pytest.mark.cuda
@pytest.mark.skipif(not _backends.cuda_usable(), reason="needs a CUDA GPU and _core_cuda")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 16, generator=gen).round().to(dtype)  # integer grid: exact ties
    y = torch.randint(0, 5, (300,), generator=gen)
    want = semihard_triplets(x, y, backend="reference")
    got = semihard_triplets(x.cuda(), y.cuda(), backend="cuda")
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    lc = semihard_triplet_loss(xc, y, backend="reference")
    lg = semihard_triplet_loss(xg, y.cuda(), backend="cuda")
    lc.backward()
    lg.backward()
    assert lg.item() == pytest.approx(lc.item(), rel=1e-5)
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(_backends.core() is None, reason="needs the compiled CPU module")
def test_triplet_gradient_is_bit_reproducible_across_calls():
    """Per-thread gradient accumulators take their anchor blocks by a fixed rule: repeated calls
    (several parallel chunks here) give the very same bits (a dynamic schedule did not, and
    MACE's fits differed from run to run)."""
    gen = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(640, 32, generator=gen), torch.arange(640) % 10

    def gradient() -> torch.Tensor:
        x = emb.clone().requires_grad_(True)
        semihard_triplet_loss(x, labels, backend="cpu").backward()
        return x.grad

    first = gradient()
    assert all(torch.equal(first, gradient()) for _ in range(10))
