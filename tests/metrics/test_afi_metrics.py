"""AfI's metrics against explicit oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyconcepts.metrics.afi import (
    attack_success_rate,
    distillation_accuracy,
    mmd2,
    topk_precision,
)


def _mmd_oracle(x, y, sigma, unbiased):
    """MMD² written out with explicit loops over sample pairs."""

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * sigma**2))

    def within(s):
        n = len(s)
        return np.mean(
            [k(s[i], s[j]) for i in range(n) for j in range(n) if not unbiased or i != j]
        )

    across = np.mean([k(a, b) for a in x for b in y])
    return within(x) + within(y) - 2 * across


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_oracle(unbiased):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=gen), torch.randn(5, 3, generator=gen) + 1
    got = float(mmd2(x, y, bandwidth=1.3, unbiased=unbiased))
    assert got == pytest.approx(_mmd_oracle(x.double(), y.double(), 1.3, unbiased), rel=1e-9)
    assert float(mmd2(x, x)) == pytest.approx(0.0, abs=1e-12)
    assert float(mmd2(x, y)) > float(mmd2(x, x + 0.01))


def test_mmd_median_bandwidth_is_scale_free():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 4, generator=gen), torch.randn(6, 4, generator=gen) + 0.5
    assert float(mmd2(x, y)) == pytest.approx(float(mmd2(100 * x, 100 * y)), rel=1e-6)


def test_metric_errors_and_simple_values():
    with pytest.raises(ValueError, match="x, y"):
        mmd2(torch.rand(3, 2), torch.rand(3, 4))
    with pytest.raises(ValueError, match="at least 2"):
        mmd2(torch.rand(1, 2), torch.rand(3, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2(torch.rand(3, 2), torch.rand(3, 2), bandwidth=0.0)
    clean, occl = torch.tensor([1, 1, 1, 0]), torch.tensor([2, 1, 0, 0])
    assert attack_success_rate(clean, occl, 1) == pytest.approx(2 / 3)
    assert math.isnan(attack_success_rate(clean, occl, 5))
    with pytest.raises(ValueError, match="occluded_pred"):
        attack_success_rate(clean, occl[:2], 1)
    assert topk_precision(torch.tensor([0.1, 0.9, 0.5, 0.7]), [1, 2]) == 0.5
    assert topk_precision(torch.tensor([0.1, 0.9, 0.5, 0.7]), [1], k=2) == 0.5


def test_distillation_student_learns_separable_task():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    assert distillation_accuracy(x[:40], y[:40], x[40:], y[40:], epochs=60) >= 0.85


def test_mmd_batched_equals_one_by_one():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(3, 5, 4, generator=gen), torch.randn(3, 6, 4, generator=gen)
    batched = mmd2(x, y)
    assert batched.shape == (3,)
    for b in range(3):
        assert float(batched[b]) == pytest.approx(float(mmd2(x[b], y[b])), rel=1e-12)
