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
