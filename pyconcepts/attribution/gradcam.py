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


def _check_targets(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    targets = torch.as_tensor(targets, device=logits.device).long().view(-1)
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets: expected {logits.shape[0]} class ids, got {targets.shape[0]}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(f"targets: expected class ids in [0, {logits.shape[1]}), got {targets}")
    return targets
