"""SRAE metrics on hand-made maps and masks with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from pyconcepts.explainers.srae_compare import table_markdown
from pyconcepts.metrics.srae import (
    concept_concentration,
    f_cls,
    f_reg,
    locality,
    orthogonality,
)


def test_faithfulness_metrics() -> None:
    assert f_reg(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])) == pytest.approx(0.75)
    logits = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
    assert f_cls(logits, torch.tensor([0.5, 5.0]), 1) == 1.0
    assert f_cls(logits, torch.tensor([4.0, 5.0]), 1) == 0.5
    with pytest.raises(ValueError, match="approximation"):
        f_reg(torch.zeros(3), torch.zeros(2))


def test_orthogonality_of_disjoint_and_identical_maps() -> None:
    disjoint = torch.zeros(4, 3, 3, 3)
    for i in range(3):
        disjoint[:, i, i] = 1.0  # map i lights row i: pairwise correlation -1/2, not 0
    corr = -0.5
    o1, _ = orthogonality(disjoint)
    assert o1 == pytest.approx(math.sqrt(3 + 6 * corr**2) - math.sqrt(3))
    rng = torch.Generator().manual_seed(0)
    noise = torch.rand(200, 2, 8, 8, generator=rng)
    o1, o2 = orthogonality(noise)
    assert abs(o1) < 0.01 and abs(o2) < 0.01
    same = noise[:, :1].repeat(1, 2, 1, 1)
    o1, o2 = orthogonality(same)
    assert o1 == pytest.approx(2 - math.sqrt(2)) and o2 > 10


def test_locality_entropy() -> None:
    masks = torch.zeros(2, 2, 4, 4)
    masks[:, 0, :2] = 1
    masks[:, 1, 2:] = 1
    on_one = masks[:, :1].clone()
    assert float(locality(on_one, masks)) == pytest.approx(0.0, abs=1e-12)
    uniform = torch.ones(2, 1, 4, 4)
    assert float(locality(uniform, masks)) == pytest.approx(math.log(2))
    # half the mass off every part: a third "context" part
    partial = torch.ones(2, 1, 4, 4)
    masks_small = masks.clone()
    masks_small[:, :, :, 2:] = 0
    assert float(locality(partial, masks_small)) == pytest.approx(
        -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    )
    # overlapping masks share a pixel's mass
    overlap = torch.ones(1, 2, 2, 2)
    assert float(locality(torch.ones(1, 1, 2, 2), overlap)) == pytest.approx(math.log(2))
    # an all-zero map has no locality; zero images of a map are not averaged in
    dead = torch.zeros(2, 1, 4, 4)
    assert math.isnan(float(locality(dead, masks)))
    mixed = on_one.clone()
    mixed[1] = 0
    assert float(locality(mixed, masks)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="masks"):
        locality(uniform, torch.zeros(2, 2, 5, 5))


def test_concept_concentration() -> None:
    masks = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = masks[0, 1, 0, 1] = masks[0, 2, 1] = True
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0, 0, 0] = 1.0
    maps[0, 1, 0, 1] = 1.0
    gt = concept_concentration(maps, masks, torch.tensor([True, True, False]))
    assert gt["share"] == 1.0 and gt["coverage"] == 1.0 and gt["chance"] == 0.25


def test_table_markdown() -> None:
    text = table_markdown({"SRAE": {"F_reg Training": 0.1, "F_cls Testing": 0.995},
                           "Z": {"Locality Positive": 1.2}})  # fmt: skip
    assert "| F_cls | Testing | 99.50% | — |" in text
    assert text.splitlines()[0] == "| Metric | | SRAE | Z |"
