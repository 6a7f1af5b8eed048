"""Distributed fitting: IBD's class bases sharded over targets (exactly equal) and its concept
classifiers under torch DDP on 2 Ray workers (equal within the stated tolerance)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from pyconcepts.distributed import ddp_concept_trainer, sharded_basis
from pyconcepts.explainers import IBD
from pyconcepts.explainers.ibd import ConceptTraining, train_concept_classifiers
from pyconcepts.ops import greedy_nnls_basis

pytest.importorskip("ray", reason="Ray is not installed (the [distributed] extra)")

# DDP sums the two ranks' gradients in another order than one process does: the weights agree
# to this tolerance (measured: about 1e-6 after 2 rounds x 20 Adam steps; see docs/scaling.md).
DDP_ATOL = 1e-4


def test_sharded_basis_is_exactly_the_single_process_one(ray_cluster: Any) -> None:
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(37, 24, generator=gen, dtype=torch.float64)
    candidates = torch.randn(15, 24, generator=gen, dtype=torch.float64)
    expected = greedy_nnls_basis(targets, candidates, 5)
    for n in (1, 3, 50):
        got = sharded_basis(n)(targets, candidates, 5)
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


def test_ibd_fit_with_sharded_basis(ray_cluster: Any, quick_fitted: dict) -> None:
    fitted = quick_fitted["ibd"]
    again = copy.deepcopy(fitted)
    again._decompose_classes(sharded_basis(3))
    assert torch.equal(again.basis_indices_, fitted.basis_indices_)
    assert torch.equal(again.basis_coefs_, fitted.basis_coefs_)
    assert torch.equal(again.residuals_, fitted.residuals_)


def test_ddp_concept_classifiers_match_one_process(ray_cluster: Any) -> None:
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(901, 16, generator=gen).relu()
    Y = torch.rand(901, 5, generator=gen) < torch.tensor([0.02, 0.05, 0.1, 0.2, 0.01])
    settings = ConceptTraining(neg_ratio=5, mining_rounds=2, hard_fraction=0.5, steps=20,
                               lr=0.05, weight_decay=1e-4)  # fmt: skip
    state = torch.Generator().manual_seed(7).get_state()
    one = train_concept_classifiers(X, Y, torch.Generator().set_state(state), settings)
    two = ddp_concept_trainer(2)(X, Y, torch.Generator().set_state(state), settings)
    for a, b in zip(one, two):
        assert torch.allclose(a, b, atol=DDP_ATOL, rtol=0), float((a - b).abs().max())
    assert float(one[0].abs().max()) > 0.1  # it learned something


def test_ibd_fit_under_ddp(ray_cluster: Any, resnet: torch.nn.Module, small_world: Any) -> None:
    options = {"steps": 10, "mining_rounds": 1, "max_images": 96}
    one = IBD(resnet, **options).fit(small_world)
    two = IBD(resnet, **options).fit(small_world, trainer=ddp_concept_trainer(2))
    assert torch.allclose(one.concept_weights_, two.concept_weights_, atol=DDP_ATOL, rtol=0)
    assert torch.equal(one.basis_indices_, two.basis_indices_)
    assert torch.allclose(one.basis_coefs_, two.basis_coefs_, atol=1e-3, rtol=0)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_shards"):
        sharded_basis(0)
    with pytest.raises(ValueError, match="num_workers"):
        ddp_concept_trainer(0)


def test_afi_occluders_one_class_per_ray_task(
    ray_cluster: Any, vgg: torch.nn.Module, small_world: Any
) -> None:
    from pyconcepts.distributed import ray_map
    from pyconcepts.explainers.afi import fit_occluders

    x, y = small_world.tensors()
    classes = [0, 3, 7]
    keep = torch.cat([(y == c).nonzero().flatten()[:3] for c in classes])
    kw = {"max_iter": 3, "lr": 0.02, "seed": 5}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each task
    try:
        here = fit_occluders(vgg, x[keep], y[keep], classes, batched=False, **kw)
    finally:
        torch.set_num_threads(threads)
    spread = fit_occluders(vgg, x[keep], y[keep], classes, map_classes=ray_map(), **kw)
    for name in ("delta", "iterations", "converged", "used"):
        assert torch.equal(getattr(here, name), getattr(spread, name)), name
    assert float(spread.delta.abs().sum()) > 0


def test_afi_fit_with_ray_map(ray_cluster: Any, quick_fitted: dict) -> None:
    from pyconcepts.data import ConceptWorld
    from pyconcepts.distributed import ray_map

    fitted = quick_fitted["afi"]
    again = type(fitted)(fitted.model, **fitted.get_config())
    again.fit(ConceptWorld(64, seed=5), map_classes=ray_map())
    # per-class against batched optimisation: the tolerance of tests/explainers/test_afi.py
    assert torch.allclose(again.delta_, fitted.delta_, atol=1e-5, rtol=0)
    assert torch.equal(again.occluder_iterations_, fitted.occluder_iterations_)


def test_srae_parts_one_per_ray_task(
    ray_cluster: Any, vgg: torch.nn.Module, small_world: Any
) -> None:
    from pyconcepts.distributed import ray_map
    from pyconcepts.explainers import SRAE

    kw = {"classes": [0, 1, 3], "hidden": (16, 8), "n_features": 3, "epochs": 3,
          "class_batch_size": 2}  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each task
    try:
        here = SRAE(vgg, **kw).fit(small_world.tensors(), progress=False)
    finally:
        torch.set_num_threads(threads)
    spread = SRAE(vgg, **kw).fit(small_world.tensors(), progress=False, map_parts=ray_map())
    for (name, a), (_, b) in zip(
        here.autoencoder_.named_parameters(), spread.autoencoder_.named_parameters()
    ):
        assert torch.equal(a, b), name
    assert spread.history_.best_epoch == here.history_.best_epoch
