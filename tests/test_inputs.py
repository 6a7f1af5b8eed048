"""One input rule on both paths (pyconcepts.inputs): every explainer and its ONNX export accept
floating-point images of any precision (cast to the dtype that runs them) and refuse integer,
empty and non-finite batches with the same error type and message, before any graph runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pyconcepts.data import ConceptWorld

pytest.importorskip("onnxruntime")
from pyconcepts.export import OnnxExplainer

METHODS = ["mace", "srae", "afi", "pattern_mining", "ibd"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two concept-world images on the 1/256 grid: exact in float16 and bfloat16 too, so a
    cast of them changes no value and must change no result."""
    return (ConceptWorld(4, seed=11).image(slice(0, 2)) * 256).floor() / 256


@pytest.fixture(scope="module")
def paths(quick_fitted: dict, quick_exports: dict) -> dict[str, dict[str, Any]]:
    """method → {"torch": fitted explainer, "onnx": its export loaded in onnxruntime}."""
    return {m: {"torch": quick_fitted[m], "onnx": OnnxExplainer(quick_exports[m])} for m in METHODS}


def error_of(explainer: Any, images: Any) -> tuple[type, str]:
    with pytest.raises((TypeError, ValueError)) as caught:
        explainer.explain(images)
    return caught.type, str(caught.value)


@pytest.mark.filterwarnings("ignore::pyconcepts.errors.EmptyHeatmapWarning")
@pytest.mark.parametrize("method", METHODS)
def test_floats_of_any_precision_are_cast(method, paths, images):
    for path, explainer in paths[method].items():
        want = explainer.explain(images).concept_scores
        for dtype in (torch.float64, torch.float16, torch.bfloat16):
            got = explainer.explain(images.to(dtype)).concept_scores
            assert torch.equal(got, want), (path, dtype)
    assert torch.equal(paths[method]["onnx"].explain(images.double().numpy()).concept_scores, want)


BAD = {
    "integers": (lambda x: (x * 255).to(torch.uint8), TypeError, "floating-point values"),
    "int64": (lambda x: x.long(), TypeError, "got dtype int64"),
    "bool": (lambda x: x > 0.5, TypeError, "got dtype bool"),
    "empty batch": (lambda x: x[:0], ValueError, "at least one image"),
    "NaN": (lambda x: torch.where(x > 0.5, float("nan"), x), ValueError, "finite"),
    "inf": (lambda x: torch.full_like(x, float("inf")), ValueError, "finite"),
    "beyond float32": (lambda x: x.double() * 1e300, ValueError, "finite"),
    "3-D": (lambda x: x[0], ValueError, "4-D"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("method", METHODS)
def test_both_paths_refuse_alike(method, case, paths, images):
    make, error, words = BAD[case]
    errors = {path: error_of(explainer, make(images)) for path, explainer in paths[method].items()}
    assert errors["torch"] == errors["onnx"], errors
    assert errors["torch"][0] is error and words in errors["torch"][1], errors


def test_numpy_arrays_follow_the_same_rule_on_the_onnx_path(paths, images):
    onnx = paths["srae"]["onnx"]  # its Einsum crashed onnxruntime at batch 0
    assert error_of(onnx, np.zeros((0, 3, 64, 64), np.float32)) == (
        ValueError,
        "images: expected at least one image, got an empty batch",
    )
    assert error_of(onnx, np.zeros((1, 3, 64, 64), np.int32)) == (
        TypeError,
        "images: expected floating-point values, got dtype int32",
    )
    flipped = images.numpy()[:, :, ::-1]  # negative strides, read-only: copied, not refused
    flipped.setflags(write=False)
    assert len(onnx.explain(flipped)) == 2


def test_finite_values_whose_sum_overflows_are_accepted_and_one_nan_among_them_is_not():
    from pyconcepts.inputs import check_image_batch

    huge = torch.full((2, 3, 4, 4), 3e38)  # finite in float32, their sum is inf
    assert torch.equal(check_image_batch(huge, torch.float32), huge)
    huge[1, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        check_image_batch(huge, torch.float32)
    with pytest.raises(ValueError, match="finite"):
        check_image_batch(torch.tensor([[[[float("inf"), -float("inf")]]]]), torch.float32)
