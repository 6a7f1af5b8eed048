"""The base-class mechanics (persistence, checks, ONNX) on a minimal explainer defined here."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from pyconcepts.errors import LoadError, NotFittedError
from pyconcepts.explainers.base import ConceptExplainer, class_names_of
from pyconcepts.explanation import Explanation
from pyconcepts.models import cw_vgg


class _Head(nn.Module):
    def __init__(self, model: nn.Module, directions: torch.Tensor) -> None:
        super().__init__()
        self.model, self.directions = model, directions

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.features(x)
        logits = self.model.fc2(self.model.relu_fc1(self.model.fc1(self.model.flatten(feats))))
        return logits, feats.mean((2, 3)) @ self.directions.t()


class MeanDirections(ConceptExplainer):
    """Concept i = mean pooled feature of class i (enough to exercise the contract)."""

    method = "mean-directions"
    onnx_outputs = ("logits", "concept_scores")

    def __init__(self, model: nn.Module, layer: str = "features.relu4", scale: float = 1.0):
        self.model, self.layer, self.scale = model, layer, scale

    def fit(self, data, **kwargs):
        images, labels = data
        self._record_fit(images)
        with torch.no_grad():
            pooled = self.model.features(images).mean((2, 3))
        self.directions_ = torch.stack([pooled[labels == c].mean(0) for c in range(2)]) * self.scale
        self.concept_names_ = ["a", "b"]
        self.class_names_ = class_names_of(self.model, 10, None)
        return self

    def explain(self, images, **kwargs):
        self._check_fitted()
        images = self._check_images(images)
        with torch.no_grad():
            logits, scores = self._onnx_module()(images)
        return Explanation(
            self.method, self.layer, self.concept_names_, scores, logits, logits.argmax(1),
            self.class_names_,
        )  # fmt: skip

    def _state(self):
        return {"directions": self.directions_}, {"concept_names": self.concept_names_}

    def _set_state(self, tensors, state):
        self.directions_ = tensors["directions"]
        self.concept_names_ = state["concept_names"]
        self.class_names_ = class_names_of(self.model, 10, None)

    def _onnx_module(self):
        return _Head(self.model, self.directions_)


@pytest.fixture()
def fitted():
    torch.manual_seed(0)
    model = cw_vgg().eval()
    images, labels = torch.rand(8, 3, 64, 64), torch.tensor([0, 1] * 4)
    return MeanDirections(model, scale=2.0).fit((images, labels)), images


def test_constructor_stores_only_and_unfitted_use_raises():
    e = MeanDirections(cw_vgg(), scale=3.0)
    assert e.get_config() == {"layer": "features.relu4", "scale": 3.0}
    assert not e.is_fitted and "scale=3.0" in repr(e)
    with pytest.raises(NotFittedError, match="fit"):
        e.explain(torch.rand(1, 3, 64, 64))
    with pytest.raises(NotFittedError):
        e.save("never.pcx")


def test_save_load_round_trip_gives_identical_explanations(fitted, tmp_path):
    e, images = fitted
    path = e.save(tmp_path / "e.pcx")
    loaded = MeanDirections.load(path, model=e.model)
    assert loaded.get_config() == e.get_config() and loaded.input_size_ == (64, 64)
    a, b = e.explain(images), loaded.explain(images)
    assert torch.equal(a.concept_scores, b.concept_scores)


def test_load_refuses_other_methods_architectures_and_warns_on_other_weights(fitted, tmp_path):
    e, _ = fitted
    path = e.save(tmp_path / "e.pcx")

    class Other(MeanDirections):
        method = "other"

    with pytest.raises(LoadError, match="mean-directions"):
        Other.load(path, model=e.model)
    with pytest.raises(ValueError, match="different architecture"):
        MeanDirections.load(path, model=nn.Sequential(nn.Linear(2, 2)))
    with pytest.warns(UserWarning, match="other weights"):
        MeanDirections.load(path, model=cw_vgg())


def test_images_are_validated(fitted):
    e, _ = fitted
    for bad, err, match in [
        (torch.rand(3, 64, 64), ValueError, "4-D"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int64), TypeError, "floating"),
        (torch.rand(0, 3, 64, 64), ValueError, "empty"),
        (torch.rand(1, 1, 64, 64), ValueError, "3 channels"),
        (torch.full((1, 3, 64, 64), float("nan")), ValueError, "finite"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ]:
        with pytest.raises(err, match=match):
            e.explain(bad)


def test_explanation_save_and_plot(fitted, tmp_path):
    e, images = fitted
    result = e.explain(images)
    assert result.to_dict()["top_concepts"][0][0][0] in ("a", "b")
    folder = result.save(tmp_path / "expl", pngs=2)
    assert (folder / "manifest.json").exists() and (folder / "image_1.png").exists()


def test_onnx_export_runs_in_onnxruntime_with_dynamic_batch(fitted, tmp_path):
    pytest.importorskip("onnxruntime")
    from pyconcepts.export import OnnxExplainer

    e, _ = fitted
    path = e.export_onnx(tmp_path / "e.onnx")
    served = OnnxExplainer(path)
    assert served.method == "mean-directions" and served.concept_names == ["a", "b"]
    for n in (1, 7):
        x = torch.rand(n, 3, 64, 64)
        torch_result, onnx_result = e.explain(x), served.explain(x)
        assert torch.allclose(onnx_result.concept_scores, torch_result.concept_scores, atol=1e-4)
        assert torch.allclose(onnx_result.logits, torch_result.logits, atol=1e-4)
    with pytest.raises(ValueError, match="images"):
        served.run(torch.rand(2, 3, 32, 32))
    with pytest.raises(LoadError, match="no such file"):
        OnnxExplainer(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(LoadError):
        OnnxExplainer(tmp_path / "junk.onnx")


def test_the_contract_check_set_passes_on_a_correct_explainer():
    from pyconcepts.testing import check_explainer

    torch.manual_seed(0)
    model = cw_vgg(image_size=(48, 64)).eval()
    images, labels = torch.rand(8, 3, 48, 64), torch.tensor([0, 1] * 4)
    report = check_explainer(lambda: MeanDirections(model), (images, labels), images)
    assert len(report.passed) >= 40 and not report.skipped
    square_model = cw_vgg().eval()
    square = check_explainer(
        lambda: MeanDirections(square_model), (torch.rand(4, 3, 64, 64), labels[:4]),
        torch.rand(4, 3, 64, 64), check_onnx=False, memory_calls=0,
    )  # fmt: skip
    assert set(square.skipped) == {"non_square", "onnx", "memory"}


class LeavesHooks(MeanDirections):
    def fit(self, data, **kwargs):
        self.model.fc1.register_forward_hook(lambda *a: None)
        return super().fit(data)


class SwallowsInterrupts(MeanDirections):
    def fit(self, data, **kwargs):
        self._record_fit(data[0])
        try:
            self.model(data[0])
        except KeyboardInterrupt:
            pass
        return super().fit(data)


class Leaks(MeanDirections):
    kept: ClassVar[list[torch.Tensor]] = []

    def explain(self, images, **kwargs):
        self.kept.append(torch.ones(3 * 2**20))  # 12 MiB a call, never freed
        return super().explain(images)


@pytest.mark.parametrize(
    "broken, check",
    [
        (LeavesHooks, "no_hooks_left"),
        (SwallowsInterrupts, "interrupted_fit_leaves_unfitted"),
        (Leaks, "memory_after_100_explains"),
    ],
)
def test_the_contract_check_set_catches_a_broken_explainer(broken, check):
    from pyconcepts.testing import check_explainer

    model = cw_vgg(image_size=(48, 64)).eval()
    images, labels = torch.rand(4, 3, 48, 64), torch.tensor([0, 1] * 2)
    with pytest.raises(AssertionError, match=check):
        check_explainer(lambda: broken(model), (images, labels), images, check_onnx=False)
    Leaks.kept.clear()


def test_failed_or_interrupted_fits_leave_the_explainer_as_it_was(fitted):
    e, images = fitted
    before = e.explain(images).concept_scores
    bad = torch.rand(4, 3, 64, 64), torch.tensor([0, 0, 0, 0])  # no image of class 1: NaN mean
    fresh = MeanDirections(e.model)
    handle = e.model.features.conv2.register_forward_hook(_raise(KeyboardInterrupt()))
    try:
        with pytest.raises(KeyboardInterrupt):
            fresh.fit(bad)
        with pytest.raises(KeyboardInterrupt):
            e.fit((images, torch.tensor([1, 0] * 4)))
    finally:
        handle.remove()
    assert not fresh.is_fitted and vars(fresh).keys() == {"model", "layer", "scale"}
    assert torch.equal(e.explain(images).concept_scores, before)
    small = torch.rand(4, 3, 32, 32)  # a refit may change the image size
    model = e.model
    refit = MeanDirections(cw_vgg(image_size=32).eval()).fit((small, torch.tensor([0, 1] * 2)))
    assert refit.input_size_ == (32, 32) and model is e.model


def _raise(error: BaseException):
    def hook(*_):
        raise error

    return hook


def test_out_of_memory_is_one_typed_error_and_the_next_call_works(fitted):
    from pyconcepts.errors import OutOfMemoryError

    e, images = fitted
    before = e.explain(images).concept_scores
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 93458368000 bytes.")  # fmt: skip
    for error in (cpu_oom, torch.OutOfMemoryError("CUDA out of memory."), MemoryError()):
        handle = e.model.features.conv1.register_forward_hook(_raise(error))
        try:
            with pytest.raises(OutOfMemoryError, match=r"\.explain ran out of memory"):
                e.explain(images)
            with pytest.raises(torch.OutOfMemoryError):  # also caught as torch's own type
                e.fit((images, torch.tensor([0, 1] * 4)))
        finally:
            handle.remove()
        assert torch.equal(e.explain(images).concept_scores, before)
    handle = e.model.fc1.register_forward_hook(_raise(RuntimeError("shape mismatch")))
    try:
        with pytest.raises(RuntimeError, match="shape mismatch") as info:
            e.explain(images)
        assert not isinstance(info.value, MemoryError)
    finally:
        handle.remove()


def test_all_zero_heatmaps_stay_zero_with_a_warning(fitted):
    from pyconcepts.errors import EmptyHeatmapWarning

    class WithMaps(MeanDirections):
        def explain(self, images, **kwargs):
            result = super().explain(images)
            maps = torch.zeros(len(result), 2, *images.shape[-2:])
            maps[1:] = 1.0
            ids = torch.arange(2).expand(len(result), 2)
            return dataclasses.replace(result, heatmaps=maps, heatmap_concepts=ids)

    e, images = fitted
    with_maps = WithMaps.load(e.save(Path(tempfile.mkdtemp()) / "e.pcx"), model=e.model)
    with pytest.warns(EmptyHeatmapWarning, match=r"1 of 8 images \(0\)"):
        result = with_maps.explain(images)
    assert torch.equal(result.heatmaps[0], torch.zeros_like(result.heatmaps[0]))


def test_other_image_sizes_are_refused_naming_height_and_width(fitted):
    e, _ = fitted
    with pytest.raises(ValueError, match=r"height 64 and width 64 .*got height 64 and width 48"):
        e.explain(torch.rand(1, 3, 64, 48))


def test_max_images_caps_what_every_explainer_fits_on() -> None:
    """Images past ``max_images`` are NaN: an explainer that read one would refuse the data."""
    from pyconcepts.data import ConceptWorld, iter_batches
    from pyconcepts.models import cw_resnet, cw_vgg
    from pyconcepts.testing import quick_explainers

    world = ConceptWorld(24, seed=1)
    x, y = world.tensors()
    assert [len(b) for b, _ in iter_batches((x, y), 5, max_images=12)] == [5, 5, 2]
    with pytest.raises(ValueError, match="max_images"):
        next(iter_batches(x, 5, max_images=0))
    poisoned = x.clone()
    poisoned[16:] = float("nan")
    masks = world.concept_masks(slice(None))
    torch.manual_seed(0)
    for method, (make, _, kw) in quick_explainers(world, cw_vgg(), cw_resnet()).items():
        explainer = make()
        explainer.max_images = 16  # type: ignore[attr-defined]
        data = (poisoned, masks) if method == "ibd" else (poisoned, y)
        explainer.fit(data, **kw)  # would raise "expected finite values" past image 16
        assert "max_images=16" in repr(explainer), method
        explainer.max_images = 17  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="finite"):
            explainer.fit(data, **kw)
