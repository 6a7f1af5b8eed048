"""Regressions found by fuzzing the compiled kernels (fuzz/, docs/reliability.md): inputs that
the public ops refuse, but that the kernels must still survive without reading or writing outside
their buffers. The ops' argument validation is switched off to reach the kernels with them; under
scripts/sanitize.sh, ASan also sees any stray access."""

from __future__ import annotations

import pytest
import torch

from pyconcepts import _backends
from pyconcepts.ops import semihard_triplet_loss, semihard_triplets
from pyconcepts.ops import triplet as triplet_module

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(_backends.core() is None, reason="no _core")),
    pytest.param("cuda", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triplet_kernels_pick_a_negative_when_every_distance_is_nan(
    device: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only negative sits at NaN distance: the farthest-negative fallback used to keep the
    index -1, return it, read row -1 and (for the gradient) write it."""
    monkeypatch.setattr(triplet_module, "validate", lambda emb, labels, margin: (emb, labels))
    emb = torch.tensor([[0.0], [float("nan")], [1.0]], dtype=dtype, device=device)
    labels = torch.tensor([0, 1, 0], device=device)
    anchors, positives, negatives = semihard_triplets(emb, labels, backend=device)
    assert anchors.tolist() == [0, 2] and positives.tolist() == [2, 0]
    assert negatives.tolist() == [1, 1]
    emb.requires_grad_()
    semihard_triplet_loss(emb, labels, backend=device).backward()
    assert emb.grad is not None and emb.grad.shape == emb.shape


# Candidate rows (C) and targets found by fuzz/fuzz_greedy_nnls_basis: candidate 1 is nearly
# -candidate 0 (its part orthogonal to candidates {0, 2, 3} is 6.6e-13 of its squared norm), so
# it lies in their span but outside their cone.
_C = [[3.96875, 3.96875, 3.96875, -3.9375], [-4, -4, -4, 3.96875],
      [3.96875, 3.84375, -2.625, 3.96875], [-4, -4, 0.59375, 0.8125],
      [-0.71875, -3, -0.53125, -3]]  # fmt: skip
_TARGETS = [
    [-0.875, -4, -4, -4],
    [-4, -0.71875, -2.875, 3.96875],
    [3.84375, -2.625, -2.625, 3.96875],
]


@pytest.mark.parametrize("device", DEVICES)
def test_nnls_enters_a_nearly_dependent_column_outside_the_cone(device: str) -> None:
    """The rank tolerance used to reject candidate 0 here, leaving a residual^2 of 5.534 where
    5.414 is the minimum (scipy.optimize.nnls agrees)."""
    from pyconcepts.ops import greedy_nnls_basis, nnls

    C = torch.tensor(_C, dtype=torch.float64, device=device)
    targets = torch.tensor(_TARGETS, dtype=torch.float64, device=device)
    A, b = C[[1, 0, 2, 3]].T, targets[1]
    x = nnls(A, b, backend=device)
    assert float((A @ x - b).square().sum()) == pytest.approx(5.414242835406375, rel=1e-9)
    res = greedy_nnls_basis(targets, C, 5, backend=device).residual_norms
    assert bool((res[:, 1:] <= res[:, :-1] * (1 + 1e-9)).all()), res


@pytest.mark.parametrize("device", DEVICES)
def test_nnls_swaps_a_column_for_its_near_twin(device: str) -> None:
    """Finding 5's family (docs/reliability.md): column 1 is column 0 scaled by 1 - 1e-5, so it
    fails the rank test against it, and the residual is lower with it alone. The solver kept
    x = [0.012612954, 0] (residual^2 4.7645114099; column 1's gradient over its scale 2.0e-7,
    20 times the fuzz harness's bound); it now trades column 0 for column 1 as scipy does."""
    from pyconcepts.ops import nnls

    A = torch.tensor([[5.3380533112, 5.338], [0.05300070900000001, 0.053]], dtype=torch.float64)
    b = torch.tensor([0.089, -2.182], dtype=torch.float64)
    x = nnls(A.to(device), b.to(device), backend=device).cpu()
    assert x[0] == 0 and float(x[1]) == pytest.approx(0.012613093711830484, rel=1e-12)
    assert float((A @ x - b).square().sum()) == pytest.approx(4.764511400048598, rel=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_basis_residual_never_grows(device: str) -> None:
    """Input from fuzz/regressions/fuzz_greedy_nnls_basis/: target 0's squared residual went
    0 -> 9.4e-6 at the fifth term, although NNLS on those five candidates fits it exactly
    (candidate 5 is nearly -candidate 4, and target 0 = 3841 c4 + 3810 c5). Committing a
    candidate re-solved the chosen set from x = 0, and that Lawson–Hanson path stopped where the
    rank test rejected candidate 5; a step now resumes from the previous solution, so its fit is
    never worse than the previous step's."""
    from pyconcepts.ops import greedy_nnls_basis

    C = torch.tensor(
        [[3.96875, 3.96875, 3.84375, 2.21875], [-2.625, -3.25, -0.1875, -0.0625],
         [-3.125, 3.84375, -3.90625, -2.1875], [-0.3125, -0.625, -0.84375, -0.71875],
         [3.96875, 3.96875, 3.96875, -3.9375], [-4, -4, -4, 3.96875]],
        dtype=torch.float64, device=device,
    )  # fmt: skip
    target = torch.tensor([[3.96875, 3.96875, 3.96875, -3]], dtype=torch.float64, device=device)
    fit = greedy_nnls_basis(target, C, 6, backend=device)
    res = fit.residual_norms[0].cpu()
    assert bool((res[1:] <= res[:-1] * (1 + 1e-9) + 1e-9).all()), res
    # The reported residual is the coefficients' own (to the Gram form's precision).
    direct = (target[0] - fit.coefs[0] @ C[fit.indices[0]]).square().sum().item()
    assert direct == pytest.approx(res[-1].item() ** 2, abs=1e-6)
