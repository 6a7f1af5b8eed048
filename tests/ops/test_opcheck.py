"""torch.library.opcheck on the compiled tensor ops: the differentiable ones (concept_maps,
semihard_triplet_loss, with their backwards) and the non-differentiable NNLS ops (nnls,
greedy_nnls_basis; the itemset ops take Python transactions, not tensors).

Each op is wrapped as a ``torch.library.custom_op`` whose implementation calls the compiled CPU
kernel, with a ``register_fake`` kernel (output metadata without data) and a backward that is a
custom op as well, running the compiled backward. opcheck then checks the schema (no input is
mutated or aliased by the kernels), that the fake kernel's outputs match the real ones (shape,
dtype, strides), the autograd registration, and eager vs. AOT-compiled results and gradients.

The wrappers live here, not in ``pyconcepts.ops``: the public ops are ``autograd.Function``s
over a torch-ABI-free core, and registering torch dispatcher ops at import would add a global
side effect that nothing in the library needs yet. If the ops are ever exposed to torch.compile,
these wrappers (and their fake kernels) are the starting point.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytest
import torch

from pyconcepts import _backends
from pyconcepts.ops import concept_maps, greedy_nnls_basis, nnls, semihard_triplet_loss

pytestmark = pytest.mark.skipif(_backends.core() is None, reason="no compiled core")


def _grads(
    fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], grad_out: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Gradients of fn(*inputs) through the compiled backward (custom op bodies run with autograd
    below them, so the graph is built explicitly here)."""
    with torch.enable_grad():
        leaves = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in inputs)
        out = fn(*leaves)
        wrt = [t for t in leaves if t.requires_grad]
        return torch.autograd.grad(out, wrt, grad_out)


@torch.library.custom_op("pyconcepts_opcheck::concept_maps", mutates_args=())
def cm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return concept_maps(x, weight, bias, backend="cpu")


@cm_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0], *x.shape[2:])


@torch.library.custom_op("pyconcepts_opcheck::concept_maps_backward", mutates_args=())
def cm_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gx, gw, gb = _grads(lambda *t: concept_maps(*t, backend="cpu"), (x, weight, bias), grad_out)
    return gx, gw, gb


@cm_backward_op.register_fake
def _(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    return grad_x, torch.empty_like(weight), torch.empty_like(bias)


def _cm_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(*inputs)


def _cm_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return cm_backward_op(grad_out, *ctx.saved_tensors)


cm_op.register_autograd(_cm_backward, setup_context=_cm_setup)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_concept_maps_passes_opcheck(dtype: torch.dtype, channels_last: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, generator=g, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    args = (x.requires_grad_(), torch.randn(3, 5, generator=g, dtype=dtype).requires_grad_(),
            torch.randn(3, generator=g, dtype=dtype).requires_grad_())  # fmt: skip
    torch.library.opcheck(cm_op, args)
    assert torch.equal(cm_op(*args), concept_maps(*args, backend="cpu"))
    got = torch.autograd.grad(cm_op(*args).square().sum(), args)
    want = torch.autograd.grad(concept_maps(*args, backend="reference").square().sum(), args)
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want)


@torch.library.custom_op("pyconcepts_opcheck::semihard_triplet_loss", mutates_args=())
def triplet_op(
    emb: torch.Tensor, labels: torch.Tensor, margin: float, squared: bool
) -> torch.Tensor:
    return semihard_triplet_loss(emb, labels, margin, squared, backend="cpu")


@triplet_op.register_fake
def _(emb: torch.Tensor, labels: torch.Tensor, margin: float, squared: bool) -> torch.Tensor:
    return emb.new_empty(())


@torch.library.custom_op("pyconcepts_opcheck::semihard_triplet_loss_backward", mutates_args=())
def triplet_backward_op(
    grad_out: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, margin: float, squared: bool
) -> torch.Tensor:
    (grad,) = _grads(
        lambda e, lab: semihard_triplet_loss(e, lab, margin, squared, backend="cpu"),
        (emb, labels),
        grad_out,
    )
    return grad


@triplet_backward_op.register_fake
def _(grad_out: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, margin: float,
      squared: bool) -> torch.Tensor:  # fmt: skip
    return torch.empty_like(emb)


def _triplet_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    emb, labels, ctx.margin, ctx.squared = inputs
    ctx.save_for_backward(emb, labels)


def _triplet_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
    emb, labels = ctx.saved_tensors
    return triplet_backward_op(grad_out, emb, labels, ctx.margin, ctx.squared), None, None, None


triplet_op.register_autograd(_triplet_backward, setup_context=_triplet_setup)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("squared", [True, False])
def test_semihard_triplet_loss_passes_opcheck(dtype: torch.dtype, squared: bool) -> None:
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(12, 4, generator=g, dtype=dtype).requires_grad_()
    labels = torch.arange(12) % 3
    torch.library.opcheck(triplet_op, (emb, labels, 0.5, squared))
    want = semihard_triplet_loss(emb, labels, 0.5, squared, backend="cpu")
    assert torch.equal(triplet_op(emb, labels, 0.5, squared), want)
    (got,) = torch.autograd.grad(triplet_op(emb, labels, 0.5, squared), emb)
    reference = semihard_triplet_loss(emb, labels, 0.5, squared, backend="reference")
    torch.testing.assert_close(got, torch.autograd.grad(reference, emb)[0])


@torch.library.custom_op("pyconcepts_opcheck::nnls", mutates_args=())
def nnls_op(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nnls(A, b, backend="cpu")


@nnls_op.register_fake
def _(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return A.new_empty(*A.shape[:-2], A.shape[-1])


@torch.library.custom_op("pyconcepts_opcheck::greedy_nnls_basis", mutates_args=())
def greedy_op(
    targets: torch.Tensor, candidates: torch.Tensor, max_terms: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fit = greedy_nnls_basis(targets, candidates, max_terms, backend="cpu")
    return fit.indices, fit.coefs, fit.residual_norms


@greedy_op.register_fake
def _(
    targets: torch.Tensor, candidates: torch.Tensor, max_terms: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k = targets.shape[0]
    return (targets.new_empty(k, max_terms, dtype=torch.int64),
            targets.new_empty(k, max_terms), targets.new_empty(k, max_terms))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nnls_ops_pass_opcheck(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 2, 6, 4, generator=g, dtype=dtype)
    b = torch.randn(3, 2, 6, generator=g, dtype=dtype)
    torch.library.opcheck(nnls_op, (A, b))
    torch.library.opcheck(nnls_op, (A.transpose(-1, -2).contiguous().transpose(-1, -2), b))
    assert torch.equal(nnls_op(A, b), nnls(A, b, backend="cpu"))
    targets = torch.randn(5, 8, generator=g, dtype=dtype)
    candidates = torch.randn(9, 8, generator=g, dtype=dtype)
    torch.library.opcheck(greedy_op, (targets, candidates, 3))
    want = greedy_nnls_basis(targets, candidates, 3, backend="cpu")
    for got, expected in zip(greedy_op(targets, candidates, 3), want):
        assert torch.equal(got, expected)
