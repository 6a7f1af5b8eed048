"""Every explainer through the shared contract: pyconcepts.testing.check_explainer (fit →
explain → save → load → explain equal → export_onnx → onnxruntime close, plus the input,
determinism, hook, mutation, fault and memory checks). Untrained seeded models keep this fast.
Images are 48×64 (H ≠ W), so a height/width swap anywhere cannot pass."""

from __future__ import annotations

import pytest
import torch

from pyconcepts.data import ConceptWorld
from pyconcepts.models import cw_resnet, cw_vgg
from pyconcepts.testing import check_explainer, quick_explainers

SHAPE = (48, 64)


@pytest.fixture(scope="module")
def world() -> ConceptWorld:
    return ConceptWorld(64, image_size=SHAPE, seed=5)


@pytest.mark.parametrize("method", ["mace", "srae", "afi", "pattern_mining", "ibd"])
def test_explainer_keeps_the_contract(method: str, world: ConceptWorld) -> None:
    torch.manual_seed(0)
    vgg, resnet = cw_vgg(image_size=SHAPE).eval(), cw_resnet().eval()
    make, data, fit_kwargs = quick_explainers(world, vgg, resnet)[method]
    report = check_explainer(make, data, world.image(slice(0, 8)), fit_kwargs=fit_kwargs)
    assert len(report.passed) >= 45 and not report.skipped, report
