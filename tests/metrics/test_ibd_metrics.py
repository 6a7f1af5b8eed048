"""IBD metrics: average precision (vs scikit-learn), residual ratio, ground-truth basis scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pyconcepts.metrics.ibd import average_precision, basis_ground_truth, residual_ratio


def test_average_precision_matches_sklearn_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (300, 4), generator=g).float()  # many ties
    labels = torch.rand(300, 4, generator=g) < 0.2
    labels[:, 3] = False
    ap = average_precision(scores, labels)
    for c in range(3):
        assert ap[c].item() == pytest.approx(
            average_precision_score(labels[:, c].numpy(), scores[:, c].numpy()), abs=1e-12
        )
    assert torch.isnan(ap[3])
    with pytest.raises(ValueError, match="labels"):
        average_precision(scores, labels[:10])


def test_residual_ratio() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    r = torch.tensor([[0.0, 2.5], [0.0, 0.0]])
    assert residual_ratio(w, r).tolist() == [0.5, 0.0]


def test_basis_ground_truth_precision_and_recall() -> None:
    indices = torch.tensor([[0, 2, 1], [3, 0, 1]])
    coefs = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.4, 0.3]])
    defining = torch.zeros(2, 4, dtype=torch.bool)
    defining[0, [1, 2]] = True  # class 0: concepts 1, 2 (1 is in the basis with coefficient 0)
    defining[1, [3]] = True
    out = basis_ground_truth(indices, coefs, defining)
    # class 0: top-2 by coefficient = [2, 0] -> 1 hit of 2; recall: 2 found (1 has s = 0) -> 1/2
    assert out["precision_at_k"].tolist() == [0.5, 1.0]
    assert out["recall"].tolist() == [0.5, 1.0]
    assert out["mean_precision_at_k"].item() == 0.75
    out3 = basis_ground_truth(indices, coefs, defining, k=3)
    assert np.allclose(out3["precision_at_k"].numpy(), [1 / 3, 1 / 3])
