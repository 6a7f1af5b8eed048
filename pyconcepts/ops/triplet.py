"""Semi-hard triplet loss and mining (FaceNet, Schroff et al. 2015; the TF-Addons rule).

Distances are squared Euclidean when ``squared`` (else Euclidean). For every **ordered**
positive pair (a, p) — a ≠ p, equal labels — the negative is the closest n (another label)
with d(a, n) > d(a, p); when there is none, the farthest negative of a. Ties between negatives
go to the lowest index. The loss is the mean over all such pairs of relu(d_ap − d_an + margin)
(0 when no label has two members); gradients flow through the chosen triplets (the choice
itself is piecewise constant). The Euclidean distance's gradient is taken as 0 at distance 0.
Embeddings are used as given: normalise them first if you want normalised ones.

The compiled kernels never build the N×N×N tensor of TF-Addons or pytorch-metric-learning:
per anchor O(N·Q) work and O(N) memory (see ``csrc/cpu/triplet.cpp``). The CUDA kernel
(``csrc/cuda/triplet.cu``) mines all anchors in parallel, a block per run of anchors of one
label, with the per-anchor state in shared memory; it takes the rows in class order
(:func:`_class_layout`) and needs the largest label's size on the host (one synchronisation).

On CUDA tensors the automatic backend is the torch twin while its N×N temporaries fit in a
quarter of the free device memory, else our CPU kernel on a host copy: both measured faster
than the previous CUDA kernel on an H200; the rewritten one is not measured yet
(``pyconcepts.ops._dispatch``). ``backend="cuda"`` forces it.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from pyconcepts.ops import _bridge
from pyconcepts.ops._dispatch import AutoCuda, Backend, automatic_cuda, resolve_backend
from pyconcepts.opspec.triplet import anchor_offsets, num_positive_pairs, validate
from pyconcepts.reference import triplet as _reference


def _class_layout(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The rows in class order, as the CUDA kernel (and its CPU emulation) takes them.

    ``members``: the rows grouped by label, in index order within a label; ``class_start`` and
    ``class_stop``: per position, the bounds of that row's label; then the largest label's
    size as a Python int (a device synchronisation on CUDA). O(N) memory.
    """
    sorted_labels, members = torch.sort(labels, stable=True)
    counts = torch.unique_consecutive(sorted_labels, return_counts=True)[1]
    n = labels.shape[0]
    class_stop = torch.cumsum(counts, 0).repeat_interleave(counts, output_size=n)
    class_start = class_stop - counts.repeat_interleave(counts, output_size=n)
    return members, class_start, class_stop, int(counts.max())


def _kernel_inputs(emb: torch.Tensor, labels: torch.Tensor) -> list[Any]:
    """The compiled kernels' leading arguments: ``(emb, labels, n, q)`` on the CPU; on CUDA
    ``(emb, n, q)``, the class layout and the global workspace (usually none: 0 bytes)."""
    n, q = emb.shape
    if emb.device.type != "cuda":
        return [emb, labels, n, q]
    members, class_start, class_stop, max_class = _class_layout(labels)
    size = _bridge.kernel("semihard_workspace_bytes", emb.dtype, emb.device)(n, q, max_class)
    workspace = torch.empty(size, dtype=torch.uint8, device=emb.device) if size else None
    return [emb, n, q, members, class_start, class_stop, max_class, workspace, size]


def _twin_bytes(emb: torch.Tensor) -> int:
    """Peak temporaries of the torch twin: about six N×N matrices of distances and indices."""
    return emb.shape[0] ** 2 * (4 * emb.element_size() + 4 * 8 + 2)


def _choose(emb: torch.Tensor, backend: Optional[str]) -> Union[Backend, AutoCuda]:
    which = resolve_backend(emb, backend)
    if backend is None and which == "cuda":
        return automatic_cuda(emb, _twin_bytes(emb), "host")
    return which


def _on_kernel_device(
    emb: torch.Tensor, labels: torch.Tensor, host: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense copies of the inputs where the kernel runs (the host for ``host``)."""
    if host:
        emb, labels = emb.cpu(), labels.cpu()
    return _bridge.dense(emb.detach()), _bridge.dense(labels)


def _loss_and_grad(
    emb: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    squared: bool,
    with_grad: bool,
    host: bool,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-anchor loss sums (float64) and, when asked, the gradient of their total, on
    ``emb``'s device (computed by the CPU kernel on a host copy when ``host``)."""
    device = emb.device
    emb, labels = _on_kernel_device(emb, labels, host)
    anchor_loss = torch.zeros(emb.shape[0], dtype=torch.float64, device=emb.device)
    grad = torch.zeros_like(emb) if with_grad else None
    _bridge.call(
        "semihard_triplet_loss",
        *_kernel_inputs(emb, labels), float(margin), bool(squared), anchor_loss, grad,
        dtype=emb.dtype, device=emb.device,
    )  # fmt: skip
    return anchor_loss.to(device), None if grad is None else grad.to(device)


class _SemihardTripletLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, emb: torch.Tensor, labels: torch.Tensor, margin: float, squared: bool,
        host: bool,
    ) -> torch.Tensor:  # fmt: skip
        anchor_loss, grad = _loss_and_grad(
            emb, labels, margin, squared, ctx.needs_input_grad[0], host
        )
        pairs = num_positive_pairs(labels).clamp_min(1).to(emb.dtype)
        ctx.save_for_backward(grad, pairs)
        return (anchor_loss.sum().to(emb.dtype) / pairs).reshape(())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], None, None, None, None]:
        grad, pairs = ctx.saved_tensors
        return grad * (grad_out / pairs), None, None, None, None


def semihard_triplet_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    squared: bool = True,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Mean semi-hard triplet loss of ``emb [N, Q]`` under integer ``labels [N]`` (0-D tensor).

    Raises ValueError for NaN/inf embeddings, N < 2, labels of another length or device, or a
    single label overall (no negatives). ``backend``: None (automatic), "cpu", "cuda",
    "reference".
    """
    emb, labels = validate(emb, labels, margin)
    which = _choose(emb, backend)
    if which == "reference":
        return _reference.semihard_triplet_loss(emb, labels, margin, squared)
    out: torch.Tensor = _SemihardTripletLoss.apply(
        emb, labels, float(margin), bool(squared), which == "host"
    )
    return out


def semihard_triplets(
    emb: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    squared: bool = True,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mined (anchor, positive, negative) int64 index tensors, one entry per ordered
    positive pair, ordered by anchor then positive index. ``margin`` and ``squared`` do not
    change the choice (kept for the same signature as the loss)."""
    emb, labels = validate(emb, labels, margin)
    which = _choose(emb, backend)
    if which == "reference":
        return _reference.semihard_triplets(emb, labels, margin, squared)
    device = emb.device
    emb, labels = _on_kernel_device(emb, labels, which == "host")
    offsets, total = anchor_offsets(labels)
    a, p, n = (torch.empty(total, dtype=torch.int64, device=emb.device) for _ in range(3))
    if total:
        _bridge.call(
            "semihard_triplets",
            *_kernel_inputs(emb, labels), _bridge.dense(offsets), a, p, n,
            dtype=emb.dtype, device=emb.device,
        )  # fmt: skip
    return a.to(device), p.to(device), n.to(device)
