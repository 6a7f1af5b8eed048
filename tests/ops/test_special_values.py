"""NaN, ±inf and subnormal inputs: every tensor op gives a typed error or a finite result, on the
compiled backend and on its reference twin (finite values are bounded, |v| ≤ 1e3, so that the
arithmetic itself cannot overflow)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pyconcepts import _backends
from pyconcepts.ops import (
    concept_map_stats,
    concept_maps,
    greedy_nnls_basis,
    nnls,
    semihard_triplet_loss,
)

BACKENDS = [
    pytest.param("cpu", marks=pytest.mark.skipif(_backends.core() is None, reason="no _core")),
    "reference",
]
SPECIAL = [float("nan"), float("inf"), float("-inf"), 1e-45, -1e-45, 1e-40, 2.2e-308, 0.0, -0.0]


def values(shape: tuple[int, ...], dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
    """Arrays mixing bounded ordinary values with NaN, ±inf and subnormals."""
    width = 32 if dtype == np.float32 else 64
    elements = st.one_of(
        st.floats(-1e3, 1e3, width=width, allow_subnormal=True), st.sampled_from(SPECIAL)
    )
    return arrays(dtype, shape, elements=elements)


def typed_error_or_finite(call: Callable[[], Any]) -> None:
    try:
        out = call()
    except (ValueError, TypeError):
        return
    except RuntimeError as exc:  # nnls's documented iteration cap is a typed error too
        assert "iteration" in str(exc) or "converge" in str(exc), exc
        return
    for t in out if isinstance(out, tuple) else (out,):
        assert bool(torch.isfinite(t).all()), t


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_concept_maps(backend: str, dtype: np.dtype, data: st.DataObject) -> None:
    x = torch.from_numpy(data.draw(values((2, 3, 2, 3), dtype)))
    w = torch.from_numpy(data.draw(values((4, 3), dtype)))
    b = torch.from_numpy(data.draw(values((4,), dtype)))
    typed_error_or_finite(lambda: concept_maps(x, w, b, backend=backend))
    typed_error_or_finite(lambda: tuple(concept_map_stats(x, w, b, backend=backend)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_semihard_triplet_loss(backend: str, dtype: np.dtype, data: st.DataObject) -> None:
    emb = torch.from_numpy(data.draw(values((6, 3), dtype))).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])

    def loss_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        loss = semihard_triplet_loss(emb, labels, squared=data.draw(st.booleans()),
                                     backend=backend)  # fmt: skip
        return loss.detach(), torch.autograd.grad(loss, emb)[0]

    typed_error_or_finite(loss_and_grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_nnls_and_greedy_basis(backend: str, dtype: np.dtype, data: st.DataObject) -> None:
    A = torch.from_numpy(data.draw(values((2, 5, 3), dtype)))
    b = torch.from_numpy(data.draw(values((2, 5), dtype)))
    typed_error_or_finite(lambda: nnls(A, b, backend=backend))
    targets = torch.from_numpy(data.draw(values((2, 4), dtype)))
    candidates = torch.from_numpy(data.draw(values((5, 4), dtype)))
    typed_error_or_finite(lambda: tuple(greedy_nnls_basis(targets, candidates, 3, backend=backend)))
