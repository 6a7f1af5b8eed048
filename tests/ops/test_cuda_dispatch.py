"""The automatic backend on CUDA tensors: the torch twin while its temporaries fit, the op's
fallback beyond (our CPU kernel on a host copy for triplets, our O(B·M) kernel for map
statistics), ``backend="cuda"`` still ours. The decision and the host path run on the CPU here
(the CUDA device is simulated); the same calls on a real GPU are checked when one is present."""

from __future__ import annotations

import importlib

import pytest
import torch

from pyconcepts import _backends
from pyconcepts.ops import _dispatch, concept_map_stats, concept_maps
from pyconcepts.ops import triplet as triplet_ops
from pyconcepts.reference import concept_maps as ref_maps
from pyconcepts.reference import triplet as ref_triplet


def test_the_twin_while_it_fits_then_the_fallback() -> None:
    free = 1000
    assert _dispatch.cuda_default(250, free, "host") == "reference"
    assert _dispatch.cuda_default(251, free, "host") == "host"
    assert _dispatch.cuda_default(251, free, "cuda") == "cuda"
    assert _dispatch.cuda_default(0, 0, "cuda") == "reference"


def _problem(n: int = 40, q: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, q, generator=gen, dtype=torch.float64), torch.arange(n) % 4


@pytest.fixture
def simulated_cuda(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """CPU tensors dispatched as if they lived on a GPU; returns the twin sizes asked about."""
    asked: list[int] = []

    def resolve(tensor: torch.Tensor, backend: object = None) -> str:
        return "cuda" if backend is None else str(backend)

    def automatic(tensor: torch.Tensor, twin_bytes: int, fallback: str) -> str:
        asked.append(twin_bytes)
        return _dispatch.cuda_default(twin_bytes, 10**6, fallback)  # 1 MB free

    for module in (triplet_ops, importlib.import_module("pyconcepts.ops.concept_maps")):
        monkeypatch.setattr(module, "resolve_backend", resolve)
        monkeypatch.setattr(module, "automatic_cuda", automatic)
    return asked


@pytest.mark.skipif(_backends.core() is None, reason="needs the compiled CPU module")
def test_triplets_take_the_host_kernel_beyond_the_twins_share(simulated_cuda: list[int]) -> None:
    small, labels_small = _problem(8)
    big, labels_big = _problem(80)  # 80² × 66 B (float64) > 250 kB: beyond the twin's share
    for emb, labels in ((small, labels_small), (big, labels_big)):
        emb = emb.clone().requires_grad_(True)
        loss = triplet_ops.semihard_triplet_loss(emb, labels)
        loss.backward()
        twin = emb.detach().clone().requires_grad_(True)
        expected = ref_triplet.semihard_triplet_loss(twin, labels)
        expected.backward()
        assert torch.allclose(loss, expected) and torch.allclose(emb.grad, twin.grad)
        mined = triplet_ops.semihard_triplets(emb, labels)
        assert all(
            torch.equal(a, b) for a, b in zip(mined, ref_triplet.semihard_triplets(emb, labels))
        )
    assert simulated_cuda[0] <= 250_000 < simulated_cuda[-1]


def test_map_statistics_keep_our_kernel_when_the_maps_overflow(simulated_cuda: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(5, 8, generator=gen), torch.randn(5, generator=gen)
    for size in (4, 64):  # 2 copies of [2,5,64,64] float32 = 327 kB > 250 kB
        x = torch.randn(2, 8, size, size, generator=gen)
        if _backends.core() is None and size == 64:
            continue
        stats = concept_map_stats(x, w, b, 0.1)
        expected = ref_maps.concept_map_stats(x, w, b, 0.1)
        assert all(torch.allclose(s, e, atol=1e-5) for s, e in zip(stats, expected))
        assert torch.allclose(concept_maps(x, w, b), ref_maps.concept_maps(x, w, b))
    assert simulated_cuda == [2 * 2 * 5 * 16 * 4, 2 * 2 * 5 * 4096 * 4]


@pytest.mark.cuda
@pytest.mark.skipif(not _backends.cuda_usable(), reason="needs a CUDA GPU and _core_cuda")
def test_on_a_gpu_the_automatic_choice_equals_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = (t.cuda() for t in _problem(300, 16))
    ours = triplet_ops.semihard_triplets(emb, labels, backend="cuda")
    assert all(torch.equal(a, b) for a, b in zip(triplet_ops.semihard_triplets(emb, labels), ours))
    monkeypatch.setattr(_dispatch, "TWIN_MEMORY_SHARE", 0.0)  # force the host fallback
    host = triplet_ops.semihard_triplets(emb, labels)
    assert all(torch.equal(a, b) and a.is_cuda for a, b in zip(host, ours))
    loss = triplet_ops.semihard_triplet_loss(emb, labels)
    assert loss.is_cuda
    assert torch.allclose(loss, triplet_ops.semihard_triplet_loss(emb, labels, backend="cuda"))
