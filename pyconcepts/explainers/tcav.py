"""A small TCAV (Kim et al., ICML 2018), AfI's baseline (seed §4.2–4.3), implemented in torch.

- CAV: the unit normal of a logistic-regression boundary separating a layer's flattened
  activations of concept images from those of benchmark images (full-batch Adam on the GPU or
  CPU, no sklearn).
- TCAV score of a concept for class y in a layer: the fraction of class-y images whose logit
  ``Z_y`` increases along the CAV (positive directional derivative).
- Gradient feature importance: the seed's reading of TCAV's feature attribution for the
  distillation test — the class mean of ``∂Z_y/∂f_l(x)``, negatives zeroed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyconcepts.explainers.afi import features_and_logits, layer_outputs
from pyconcepts.models.features import FeatureExtractor


def train_cav(
    positives: torch.Tensor,
    negatives: torch.Tensor,
    epochs: int = 200,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
) -> tuple[torch.Tensor, float]:
    """Fit a logistic regression (concept vs benchmark) on ``[n, d]`` activations.

    Features are standardised with the pooled mean/std; the returned CAV is the weight vector
    mapped back to activation space (divided by the std) and normalised to unit length.
    Returns (CAV ``[d]``, training accuracy). Initialised at zero, so fully deterministic.
    """
    x = torch.cat([positives, negatives]).flatten(1).double()
    y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).double().to(x.device)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    z = (x - mean) / std
    w = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device, requires_grad=True)
    b = torch.zeros((), dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, y)
        (loss + weight_decay * w.square().sum()).backward()
        opt.step()
    with torch.no_grad():
        acc = float((((z @ w + b) > 0).double() == y).double().mean())
        cav = w / std
        return (cav / cav.norm().clamp_min(1e-12)).float(), acc


def class_gradients(
    model: nn.Module, layers: Sequence[str], images: torch.Tensor, target: int, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """``∂Z_target/∂f_l(x)`` for every image and layer: layer → ``[N, *neuron_shape]``."""
    model.eval()
    fx = FeatureExtractor(model, list(layers), detach=False)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in fx.names}
    for chunk in images.split(batch_size):
        chunk = chunk.detach().requires_grad_(True)  # a graph even for frozen weights
        with torch.enable_grad():
            acts, logits = features_and_logits(fx, chunk)
            grads = torch.autograd.grad(logits[:, target].sum(), [acts[n] for n in fx.names])
        for name, g in zip(fx.names, grads):
            out[name].append(g.detach())
    return {name: torch.cat(v) for name, v in out.items()}


def tcav_scores(gradients: torch.Tensor, cavs: torch.Tensor) -> torch.Tensor:
    """Share of images with a positive directional derivative: ``[N, d]``, ``[M, d]`` → ``[M]``."""
    return (gradients.flatten(1).to(cavs.dtype) @ cavs.T > 0).double().mean(0)


def gradient_feature_importance(
    model: nn.Module,
    layers: Sequence[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Gradient-based FIS (the seed's TCAV baseline in Table 2): layer → ``[K, *neuron_shape]``."""
    per_class = []
    for c in classes:
        x = images[labels == c]
        if not len(x):
            raise ValueError(f"images: no image of class {c}")
        grads = class_gradients(model, layers, x, int(c), batch_size)
        per_class.append({n: g.mean(0).clamp_min(0) for n, g in grads.items()})
    return {n: torch.stack([p[n] for p in per_class]) for n in layers}


def tcav_concept_scores(
    model: nn.Module,
    layers: Sequence[str],
    probes: Sequence[torch.Tensor],
    benchmarks: Sequence[torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    epochs: int = 200,
    batch_size: int = 64,
) -> torch.Tensor:
    """TCAV concept importance ``[K, M]``: per concept and layer a CAV (probe vs benchmark
    activations), per class the TCAV score averaged over the layers (how TCAV ranks the concepts
    of a class when it is given several layers)."""
    names = FeatureExtractor(model, list(layers)).names
    cavs = {n: [] for n in names}  # type: dict[str, list[torch.Tensor]]
    for pos, neg in zip(probes, benchmarks):
        ap, an = (
            layer_outputs(model, names, pos, batch_size),
            layer_outputs(model, names, neg, batch_size),
        )
        for n in names:
            cavs[n].append(train_cav(ap[n], an[n], epochs=epochs)[0])
    scores = torch.zeros(len(classes), len(probes), dtype=torch.float64)
    for k, c in enumerate(classes):
        grads = class_gradients(model, names, images[labels == c], int(c), batch_size)
        for n in names:
            scores[k] += tcav_scores(grads[n], torch.stack(cavs[n]))
    return scores / len(names)
