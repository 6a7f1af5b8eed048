"""Shared fixtures: small concept worlds, the trained zoo models, hypothesis profiles."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from pyconcepts import _backends

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "nightly", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _backends.cuda_usable():
        return
    skip = pytest.mark.skip(reason=f"no usable CUDA backend: {_backends.backends()['cuda']}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_world():
    from pyconcepts.data import ConceptWorld

    return ConceptWorld(300, seed=7)


@pytest.fixture(scope="session")
def vgg() -> torch.nn.Module:
    from pyconcepts.models import load

    return load("cw-vgg", progress=False)


@pytest.fixture(scope="session")
def resnet() -> torch.nn.Module:
    from pyconcepts.models import load

    return load("cw-resnet", progress=False)


@pytest.fixture(scope="session")
def quick_fitted() -> dict:
    """The five explainers in their quick configurations (pyconcepts.testing.quick_explainers)
    on untrained seeded zoo architectures, fitted on a 64-image concept world: method → fitted
    explainer. Shared by the tests that need every method fitted, not trained."""
    from pyconcepts.data import ConceptWorld
    from pyconcepts.models import cw_resnet, cw_vgg
    from pyconcepts.testing import quick_explainers

    torch.manual_seed(0)
    world = ConceptWorld(64, seed=5)
    explainers = quick_explainers(world, cw_vgg().eval(), cw_resnet().eval())
    return {method: make().fit(data, **kw) for method, (make, data, kw) in explainers.items()}


@pytest.fixture(scope="session")
def quick_exports(quick_fitted: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each of ``quick_fitted`` exported to ONNX: method → path."""
    folder = tmp_path_factory.mktemp("quick_exports")
    return {m: e.export_onnx(folder / f"{m}.onnx") for m, e in quick_fitted.items()}


@pytest.fixture(scope="session")
def effnet() -> torch.nn.Module:
    """The pretrained EfficientNet-Lite0; skipped where the ImageNet packages are missing."""
    from pyconcepts.models import load

    try:
        return load("efficientnet-lite0")
    except ImportError as exc:
        pytest.skip(f"efficientnet-lite0 needs README's 'ImageNet models' install: no {exc.name}")


@pytest.fixture(scope="session")
def photos() -> dict:
    """scikit-image's chelsea (a tabby cat) and coffee (an espresso cup) as HxWx3 uint8."""
    pytest.importorskip(
        "skimage.data", reason="the photos need scikit-image (the [imagenet] extra)"
    )
    from pyconcepts.data.photos import photo

    return {name: photo(name) for name in ("chelsea", "coffee")}
