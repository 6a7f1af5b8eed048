"""Grad-CAM (Selvaraju et al., 2017) for any torch CNN and any conv layer, batched.

Used by filter-pattern mining (which image regions drive the class) and by IBD's Grad-CAM
decomposition for networks whose classifier is not linear in pooled features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from pyconcepts.models.features import FeatureExtractor, LayerRef


@dataclass(frozen=True)
class GradCAM:
    """Grad-CAM of a batch.

    Attributes:
        cam: ``[B,H,W]`` class activation maps (at input size when upsampled, else the layer's).
        activations: ``[B,K,h,w]`` the layer's activations A.
        weights: ``[B,K]`` channel weights α_k = spatial mean of ∂y_c/∂A_k.
        logits: ``[B,n_classes]``.
        targets: ``[B]`` the explained class of each image.
    """

    cam: torch.Tensor
    activations: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


def grad_cam(
    model: nn.Module,
    layer: LayerRef,
    images: torch.Tensor,
    targets: Optional[torch.Tensor] = None,
    upsample: bool = True,
) -> GradCAM:
    """Grad-CAM maps ``relu(Σ_k α_k A_k)`` of ``targets`` (default: predicted classes).

    Works inside ``torch.no_grad()`` and with frozen parameters: gradients are enabled locally
    and taken with respect to the layer's output, never the parameters.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a 4-D tensor [B,C,H,W], got {got}")
    fx = FeatureExtractor(model, [layer], detach=False)
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)  # guarantees a graph even for frozen models
        feats, logits = fx(x, return_output=True)
        acts = feats[fx.names[0]]
        if acts.dim() != 4:
            raise ValueError(
                f"layer: Grad-CAM needs a conv layer [B,K,h,w], got {tuple(acts.shape)}"
            )
        if targets is None:
            targets = logits.argmax(1)
        targets = _check_targets(targets, logits)
        score = logits.gather(1, targets.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, acts)
    weights = grads.mean(dim=(2, 3))
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", weights, acts.detach()))
    if upsample:
        cam = nn.functional.interpolate(
            cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
    return GradCAM(cam, acts.detach(), weights, logits.detach(), targets)


def mean_class_weights(
    model: nn.Module,
    layer: LayerRef,
    images: torch.Tensor,
    batch_size: int = 32,
    budget_bytes: int = 64 * 2**20,
) -> torch.Tensor:
    """``[K, D]``: every class's Grad-CAM weight vector (the spatially pooled gradient of its
    logit at ``layer``) averaged over ``images`` — one forward pass per batch of images and
    batched backward passes over chunks of classes (``is_grads_batched``), each chunk's
    gradients kept under ``budget_bytes``, instead of a forward and backward pass per class."""
    fx = FeatureExtractor(model, [layer], detach=False)
    total: Optional[torch.Tensor] = None
    for chunk in images.split(batch_size):
        with torch.enable_grad():
            feats, logits = fx(chunk.detach().requires_grad_(True), return_output=True)
            acts = feats[fx.names[0]]
            if acts.dim() != 4:
                raise ValueError(
                    f"layer: Grad-CAM needs a conv layer [B,K,h,w], got {tuple(acts.shape)}"
                )
            k = logits.shape[1]
            per_class = max(1, budget_bytes // max(1, acts.numel() * acts.element_size()))
            eye = torch.eye(k, dtype=logits.dtype, device=logits.device)
            sums = []
            for start in range(0, k, per_class):
                picks = eye[start : start + per_class][:, None, :].expand(-1, len(chunk), -1)
                (grads,) = torch.autograd.grad(
                    logits, acts, grad_outputs=picks, is_grads_batched=True, retain_graph=True
                )
                sums.append(grads.mean(dim=(3, 4)).sum(1))  # [classes, D]
        part = torch.cat(sums).detach()
        total = part if total is None else total + part
    if total is None:
        raise ValueError("images: expected at least one image, got none")
    return total / images.shape[0]


def _check_targets(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    targets = torch.as_tensor(targets, device=logits.device).long().view(-1)
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets: expected {logits.shape[0]} class ids, got {targets.shape[0]}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(f"targets: expected class ids in [0, {logits.shape[1]}), got {targets}")
    return targets
