"""Distributed fitting on Ray: IBD's class bases sharded over targets, IBD's concept
classifiers trained with torch DDP (gloo) across Ray workers, AfI's occluders one class per Ray
task, SRAE's class autoencoders one part of classes per task.

- :func:`sharded_basis` — :func:`pyconcepts.ops.greedy_nnls_basis` with the target rows split
  over Ray tasks. Each row's basis depends on that row's part of the Gram form alone, so the
  result is exactly the single-process one. Pass it as ``IBD.fit(..., basis=sharded_basis(n))``.
- :func:`ddp_concept_trainer` — :func:`pyconcepts.explainers.ibd.train_concept_classifiers`
  under ``torch.nn.parallel.DistributedDataParallel`` with the gloo backend (CPU; gloo also
  runs on CUDA tensors), one Ray actor per rank, the training positions split in row blocks.
  The result equals single-process fitting up to floating-point summation order (the
  tolerance the tests state). Pass it as ``IBD.fit(..., trainer=ddp_concept_trainer(n))``.
- :func:`ray_map` — runs independent calls as Ray tasks: AfI's occluders are optimised per
  class with per-class random streams, so ``AfI.fit(..., map_classes=ray_map())`` gives the
  per-class (``batched=False``) occluders bit for bit, spread over the cluster; SRAE trains
  its classes in parts that replay the same mini-batches, so ``SRAE.fit(...,
  map_parts=ray_map())`` gives its weights bit for bit with one part per task.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Optional

import torch

from pyconcepts.distributed._ray import require
from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.calls import CallMap
from pyconcepts.explainers.ibd import (
    BasisFunction,
    ConceptTrainer,
    ConceptTraining,
    train_concept_classifiers,
)
from pyconcepts.ops._dispatch import resolve_backend
from pyconcepts.ops.nnls import greedy_basis_of_gram
from pyconcepts.opspec.nnls import BasisFit, check_basis_args, gram_form


def sharded_basis(n_shards: int = 2, backend: Optional[str] = None) -> BasisFunction:
    """A ``(targets, candidates, max_terms) -> BasisFit`` function equal to
    :func:`~pyconcepts.ops.greedy_nnls_basis`, with the target rows split into ``n_shards``
    blocks solved by the compiled CPU kernel in Ray tasks. The Gram form is computed once here
    (as the single-process call does) and each task gets its rows of it, so every row's basis
    is bit for bit the single-process one. CUDA tensors and the pure-torch reference backend
    are not sharded: they run :func:`~pyconcepts.ops.greedy_nnls_basis` in this process (one
    GPU decomposes 1000 classes in under a millisecond, docs/benchmarks.md)."""
    check_positive_ints(n_shards=n_shards)

    def basis(targets: torch.Tensor, candidates: torch.Tensor, max_terms: int) -> BasisFit:
        from pyconcepts.ops import greedy_nnls_basis

        targets, candidates, max_terms = check_basis_args(targets, candidates, max_terms)
        if resolve_backend(targets, backend) != "cpu" or not len(targets):
            return greedy_nnls_basis(targets, candidates, max_terms, backend=backend)
        ray = require()
        G, H, tt = gram_form(targets, candidates)
        solve = ray.remote(greedy_basis_of_gram)
        shared = ray.put(G)
        blocks = [
            solve.remote(shared, h, t, max_terms, targets.dtype, "cpu")
            for h, t in zip(H.tensor_split(n_shards), tt.tensor_split(n_shards))
            if len(h)
        ]
        parts = ray.get(blocks)
        return BasisFit(*(torch.cat([p[i] for p in parts]) for i in range(3)))

    return basis


def ddp_concept_trainer(
    num_workers: int = 2, cpus_per_worker: int = 1, timeout_s: float = 600.0
) -> ConceptTrainer:
    """A trainer for ``IBD.fit(..., trainer=...)``: the concept classifiers trained by
    ``num_workers`` Ray actors forming one torch.distributed gloo group, each holding one row
    block of the positions (see :func:`~pyconcepts.explainers.ibd.train_concept_classifiers`
    for what is split and what is gathered). ``timeout_s`` bounds every collective, so a dead
    rank fails the fit instead of hanging it."""
    check_positive_ints(num_workers=num_workers, cpus_per_worker=cpus_per_worker)

    def train(
        X: torch.Tensor, Y: torch.Tensor, gen: torch.Generator, settings: ConceptTraining
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ray = require()
        world = min(num_workers, max(1, X.shape[0]))
        rank_cls = ray.remote(num_cpus=cpus_per_worker, max_restarts=0)(_Rank)
        ranks = [rank_cls.remote() for _ in range(world)]
        try:
            address = ray.get(ranks[0].address.remote())
            state = gen.get_state()
            blocks = zip(ranks, X.tensor_split(world), Y.tensor_split(world))
            options = (state, settings, cpus_per_worker, timeout_s)
            calls = [
                r.train.remote(i, world, address, x, y, *options)
                for i, (r, x, y) in enumerate(blocks)
            ]
            results = ray.get(calls, timeout=timeout_s)
        finally:
            for r in ranks:
                ray.kill(r)
        return results[0]

    return train


class _Rank:
    """One DDP rank: a Ray actor that joins the gloo group and trains its row block."""

    def address(self) -> str:
        """``tcp://host:port`` on this actor's node, for rank 0 to host the group's store."""
        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        return f"tcp://{host}:{port}"

    def train(
        self,
        rank: int,
        world: int,
        address: str,
        X: torch.Tensor,
        Y: torch.Tensor,
        state: torch.Tensor,
        settings: ConceptTraining,
        threads: int,
        timeout_s: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dist = torch.distributed
        torch.set_num_threads(threads)
        dist.init_process_group(
            "gloo", init_method=address, rank=rank, world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )  # fmt: skip
        try:
            gen = torch.Generator()
            gen.set_state(state)
            return train_concept_classifiers(X, Y, gen, settings, group=dist.group.WORLD)
        finally:
            dist.destroy_process_group()


def ray_map(cpus_per_task: int = 1) -> CallMap:
    """A map ``(fn, argument tuples) -> results in order`` that runs each call as a Ray task
    with ``cpus_per_task`` CPUs and torch threads; ``fn`` (and what it binds, such as a model)
    goes to the object store once."""
    check_positive_ints(cpus_per_task=cpus_per_task)

    def run(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        ray = require()
        task = ray.remote(num_cpus=cpus_per_task)(_call)
        shared = ray.put(fn)
        return list(ray.get([task.remote(shared, cpus_per_task, *args) for args in calls]))

    return run


def _call(fn: Callable[..., Any], threads: int, *args: Any) -> Any:
    torch.set_num_threads(threads)
    return fn(*args)


__all__ = ["ddp_concept_trainer", "ray_map", "sharded_basis"]
