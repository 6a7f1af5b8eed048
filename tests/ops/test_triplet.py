"""Semi-hard triplet loss / mining: kernel vs reference twin vs a plain-Python rule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconcepts import _backends
from pyconcepts.ops import _bridge, semihard_triplet_loss, semihard_triplets
from pyconcepts.ops import triplet as triplet_ops
from pyconcepts.opspec.triplet import anchor_offsets, num_positive_pairs
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


@pytest.mark.cuda
@pytest.mark.skipif(not _backends.cuda_usable(), reason="needs a CUDA GPU and _core_cuda")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("squared", [True, False])
def test_cuda_picks_the_cpu_kernels_triplets_on_arbitrary_floats(dtype, squared):
    """Random coordinates: distances summed in the same order with the same roundings, so the
    choices are the CPU kernel's bit for bit (classes of 1 to ~100 rows, runs of anchors split
    at class ends); the per-anchor loss sums are reduced in a fixed order (same bits per run)."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(700, 24, generator=gen).to(dtype)
    y = torch.cat([torch.randint(0, 7, (650,), generator=gen), torch.arange(100, 150)])
    want = semihard_triplets(x, y, backend="cpu")
    got = semihard_triplets(x.cuda(), y.cuda(), backend="cuda")
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
    _, cpu_loss, cpu_grad = run_kernel("cpu", x, y, 0.5, squared)
    runs = [
        triplet_ops._loss_and_grad(x.cuda(), y.cuda(), 0.5, squared, with_grad=True, host=False)
        for _ in range(2)
    ]
    assert torch.equal(runs[0][0], runs[1][0])
    # The same float terms, summed in float64 in another order: equal to float64 rounding.
    torch.testing.assert_close(runs[0][0].cpu(), cpu_loss)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(runs[0][1].cpu(), cpu_grad, **tol)


@pytest.mark.cuda
@pytest.mark.skipif(not _backends.cuda_usable(), reason="needs a CUDA GPU and _core_cuda")
def test_cuda_class_beyond_shared_memory_uses_the_workspace():
    """A class of 9000 rows: 16384 keys and bucket slots per anchor outgrow shared memory (on
    an A100, H100 or H200), so the per-anchor state goes to a global workspace (one slice per
    resident block)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9500, 4, generator=gen, dtype=torch.float64)  # 18,000-term gradient sums
    y = torch.cat(
        [torch.zeros(9000, dtype=torch.int64), torch.randint(1, 4, (500,), generator=gen)]
    )
    workspace = triplet_ops._kernel_inputs(x.cuda(), y.cuda())[-1]
    assert workspace > 0
    small = triplet_ops._kernel_inputs(x[:600].cuda(), torch.arange(600).cuda() % 5)[-1]
    assert small == 0
    _, cpu_loss, cpu_grad = run_kernel("cpu", x, y, 1.0, True)
    anchor_loss, grad = triplet_ops._loss_and_grad(
        x.cuda(), y.cuda(), 1.0, True, with_grad=True, host=False
    )
    torch.testing.assert_close(anchor_loss.cpu(), cpu_loss)
    torch.testing.assert_close(grad.cpu(), cpu_grad)


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


# ---- the CUDA kernel's steps, emulated on the CPU (csrc/cpu/triplet_rule_emulated.cpp) ----
# The CUDA kernel and this emulation share csrc/common/triplet_rule.h: distances, order keys,
# buckets, suffix minima, the farthest-negative and tie rules. These tests check that the rule,
# as the kernel splits it, picks exactly the CPU kernel's triplets; what only a GPU can check
# (the bitonic sort, atomics, block scans, shared-memory races) is in the CUDA tests below.

needs_core = pytest.mark.skipif(_backends.core() is None, reason="needs the compiled CPU module")


def run_kernel(op: str, x: torch.Tensor, y: torch.Tensor, margin: float, squared: bool):
    """(triplets, per-anchor loss sums, gradient of their sum) from the CPU kernel ("cpu") or
    the emulated CUDA kernel ("emulated"); no argument validation (NaN inputs reach them)."""
    x, y = x.contiguous(), y.contiguous()
    n, q = x.shape
    offsets, total = anchor_offsets(y)
    a, p, neg = (torch.empty(total, dtype=torch.int64) for _ in range(3))
    anchor_loss = torch.zeros(n, dtype=torch.float64)
    grad = torch.zeros_like(x)
    opts = {"dtype": x.dtype, "device": x.device}
    if op == "cpu":
        _bridge.call("semihard_triplets", x, y, n, q, offsets, a, p, neg, **opts)
        _bridge.call(
            "semihard_triplet_loss", x, y, n, q, margin, squared, anchor_loss, grad, **opts
        )
    else:
        members, class_start, class_stop, _ = triplet_ops._class_layout(y)
        _bridge.call(
            "semihard_rule_emulated",
            x, n, q, members, class_start, class_stop, margin, squared, offsets, a, p, neg,
            anchor_loss, grad,
            **opts,
        )  # fmt: skip
    return (a, p, neg), anchor_loss, grad


def assert_emulation_matches_cpu(x: torch.Tensor, y: torch.Tensor, margin: float, squared: bool):
    got_t, got_loss, got_grad = run_kernel("emulated", x, y, margin, squared)
    want_t, want_loss, want_grad = run_kernel("cpu", x, y, margin, squared)
    for g, w in zip(got_t, want_t):
        assert torch.equal(g, w)
    # Same terms added in the same order: the per-anchor sums are the same bits.
    assert torch.equal(got_loss, want_loss)
    # The gradient's terms are summed in another order (the CPU kernel first adds up the weights
    # of each negative): float32 sums of ~2P terms agree to about 1e-4.
    tol = {"rtol": 1e-4, "atol": 1e-4} if x.dtype == torch.float32 else {}
    torch.testing.assert_close(got_grad, want_grad, **tol, equal_nan=True)


@st.composite
def float_problem(draw):
    """Arbitrary float coordinates (rounding near ties exercises the exact distance order),
    or the half-integer grid (exact ties, duplicate points), with singleton labels."""
    if draw(st.booleans()):
        emb, labels, margin = draw(grid_problem())
        return emb, labels, margin
    n = draw(st.integers(2, 24))
    q = draw(st.integers(1, 5))
    values = draw(st.lists(st.floats(-4, 4, width=32), min_size=n * q, max_size=n * q))
    labels = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    if len(set(labels)) < 2:
        labels[0] = labels[1] + 1
    emb = [values[i * q : (i + 1) * q] for i in range(n)]
    return emb, labels, draw(st.sampled_from([0.0, 0.3, 1.0]))


@needs_core
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=80, deadline=None)
@given(problem=float_problem(), squared=st.booleans())
def test_emulated_cuda_rule_matches_the_cpu_kernel(dtype, problem, squared):
    emb, labels, margin = problem
    assert_emulation_matches_cpu(
        torch.tensor(emb, dtype=dtype), torch.tensor(labels), margin, squared
    )


@needs_core
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=40, deadline=None)
@given(problem=grid_problem(), squared=st.booleans())
def test_emulated_cuda_rule_matches_the_reference_twin(dtype, problem, squared):
    """On the grid every distance is exact, so the torch twin's Gram-matrix distances agree."""
    emb, labels, margin = problem
    x, y = torch.tensor(emb, dtype=dtype), torch.tensor(labels)
    (a, p, neg), anchor_loss, grad = run_kernel("emulated", x, y, margin, squared)
    want = reference.semihard_triplets(x, y, margin, squared)
    assert all(torch.equal(g, w) for g, w in zip((a, p, neg), want))
    pairs = num_positive_pairs(y).clamp_min(1)
    xr = x.clone().requires_grad_()
    loss = reference.semihard_triplet_loss(xr, y, margin, squared)
    loss.backward()
    assert (anchor_loss.sum() / pairs).item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(grad / pairs.to(x.dtype), xr.grad, rtol=1e-5, atol=1e-5)


@needs_core
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_cuda_rule_special_layouts(dtype):
    """One label with every row but one, singletons only but one pair, infinite distances
    (finite coordinates whose differences overflow), and NaN rows (refused by the public ops,
    but the kernels must still pick a real negative: docs/reliability.md)."""
    big = torch.finfo(dtype).max / 2
    cases = [
        (torch.arange(12.0)[:, None], torch.tensor([0] * 11 + [1])),
        (torch.tensor([[0.0], [1.0], [1.5], [4.0]]), torch.tensor([7, 1, 1, 9])),
        (torch.tensor([[big], [-big], [0.0], [big], [-big]]), torch.tensor([0, 0, 0, 1, 1])),
        (torch.tensor([[0.0], [float("nan")], [1.0]]), torch.tensor([0, 1, 0])),
        (
            torch.tensor([[0.0], [float("nan")], [1.0], [2.0], [float("nan")]]),
            torch.tensor([0, 1, 0, 1, 0]),
        ),
    ]
    for x, y in cases:
        for squared in (True, False):
            assert_emulation_matches_cpu(x.to(dtype), y, 1.0, squared)


@needs_core
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_cuda_rule_on_a_larger_batch(dtype):
    """400 random rows, 10 labels, Q = 32 (as bench.cuda_kernels): thousands of float32 near
    ties, every triplet the CPU kernel's."""
    gen = torch.Generator().manual_seed(11)
    x = torch.nn.functional.normalize(torch.randn(400, 32, generator=gen), dim=1).to(dtype)
    y = torch.randint(0, 10, (400,), generator=gen)
    for squared in (True, False):
        assert_emulation_matches_cpu(x, y, 1.0, squared)


def test_class_layout():
    members, start, stop, largest = triplet_ops._class_layout(torch.tensor([5, 2, 5, 9, 2, 5]))
    assert members.tolist() == [1, 4, 0, 2, 5, 3]
    assert start.tolist() == [0, 0, 2, 2, 2, 5]
    assert stop.tolist() == [2, 2, 5, 5, 5, 6]
    assert largest == 3
