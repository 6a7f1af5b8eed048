"""The :class:`AfI` explainer: AfI's steps strung together as a ``ConceptExplainer``, with
its explain module (shared with the ONNX export) and plots."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from pyconcepts.data.batches import iter_batches
from pyconcepts.data.concept_world import ConceptWorld
from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.afi.concepts import (
    class_impressions,
    concept_importance,
    pick_impression_layer,
    probe_sets,
)
from pyconcepts.explainers.afi.occluders import (
    ValidRange,
    features_and_logits,
    fit_occluders,
    importance_scores,
    layer_outputs,
    middle_layers,
    occlude,
    predict,
)
from pyconcepts.explainers.base import ConceptExplainer, class_names_of
from pyconcepts.explainers.calls import CallMap
from pyconcepts.explainers.layout import (
    explained_classes,
    resolve_targets,
    scaled_to_peak,
    upsample,
    warn_unexplained,
)
from pyconcepts.explanation import Explanation, displayable
from pyconcepts.metrics.afi import attack_success_rate
from pyconcepts.models.features import FeatureExtractor

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# ---- the explainer ---------------------------------------------------------------------------
def _collect(
    data: object, batch_size: int, max_images: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (first ``max_images``) images and labels of ``data`` as two tensors (labels are
    required)."""
    if isinstance(data, ConceptWorld):
        pair = data.tensors()
        return pair[0][:max_images], pair[1][:max_images]
    images, labels = [], []
    for x, y in iter_batches(data, batch_size, max_images=max_images):
        if y is None:
            raise ValueError("data: AfI needs labels: pass (images, labels) or a labelled dataset")
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError("data: expected at least one image, got none")
    return torch.cat(images), torch.cat(labels).long()


def _check_heatmap_weights(value: object) -> str:
    if value not in ("contrast", "cis"):
        raise ValueError(f"heatmap_weights: expected 'contrast' or 'cis', got {value!r}")
    return str(value)


def _check_heatmap_fusion(value: object) -> str:
    if value not in ("agreement", "single"):
        raise ValueError(f"heatmap_fusion: expected 'agreement' or 'single', got {value!r}")
    return str(value)


class _AfIGraph(nn.Module):
    """images (, targets) → AfI's outputs (``AfI.onnx_outputs`` order) for the explained class
    of each image (default: the prediction); ``explain`` and the ONNX export both run it.

    ``fusion``: (layer, CIS ``[K, C]``) of the layers whose class maps, each scaled to a maximum
    of 1 and averaged, weight the heatmap layer's map pixel by pixel (``"agreement"``); empty:
    the heatmap layer's map alone. Only the target's weight vector meets the activations, so no
    ``[B, K, h, w]`` map of every class is formed (1,000 classes cost one matrix product)."""

    classes: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        weights: torch.Tensor,
        importance: torch.Tensor,
        classes: Sequence[int],
        contrast: bool = True,
        fusion: Sequence[tuple[str, torch.Tensor]] = (),
    ) -> None:
        super().__init__()
        self.contrast = contrast and weights.shape[0] > 1
        self.model = model
        unique = list(dict.fromkeys([layer, *(n for n, _ in fusion)]))
        self.fx = FeatureExtractor(model, unique)
        key = dict(zip(unique, self.fx.names))  # as given → the extractor's canonical names
        self.layer = key[layer]
        self.fusion_layers = [key[n] for n, _ in fusion]
        self.weights = nn.Parameter(weights.float(), requires_grad=False)
        self.fusion_weights = nn.ParameterList(
            [nn.Parameter(w.float(), requires_grad=False) for _, w in fusion]
        )
        self.importance = nn.Parameter(importance.float(), requires_grad=False)
        self.register_buffer("classes", torch.tensor(list(classes), dtype=torch.long))

    def _class_map(
        self, act: torch.Tensor, weights: torch.Tensor, hit: torch.Tensor, size: Sequence[int]
    ) -> torch.Tensor:
        """The target's meta-detector map (eq. 9; less the fitted classes' mean detector when
        contrasting) at input ``size``, negative parts cut: ``[B, H, W]``."""
        v = hit @ weights  # [B, C]: the target class's channel weights (0 for unfitted ones)
        if self.contrast:
            v = v - hit.sum(1, keepdim=True) * weights.mean(0, keepdim=True)
        own = torch.einsum("bc,bchw->bhw", v.to(act.dtype), _spatial(act))[:, None]
        return upsample(own, size)[:, 0].clamp_min(0)

    def forward(
        self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, ...]:
        feats, logits = features_and_logits(self.fx, images)
        if targets is None:
            targets = logits.argmax(1)
        hit = (targets[:, None] == self.classes[None, :]).to(self.weights.dtype)  # [B, K]
        act = _spatial(feats[self.layer])
        size = images.shape[-2:]
        class_map = self._class_map(act, self.weights, hit, size)
        if len(self.fusion_layers):
            class_map = agreement_weighted(class_map, [
                self._class_map(feats[name], w, hit, size)
                for name, w in zip(self.fusion_layers, self.fusion_weights)
            ])  # fmt: skip
        class_scores = act.float().mean((2, 3)) @ self.weights.t()  # mean of eq. 9 per class
        return logits, self.importance[targets], class_map, class_scores


def _spatial(act: torch.Tensor) -> torch.Tensor:
    """A dense layer's ``[B, C]`` output as ``[B, C, 1, 1]`` maps; spatial ones as they are."""
    return act[:, :, None, None] if act.dim() == 2 else act


def spread(names: Sequence[str], n: int) -> list[str]:
    """``names`` when there are at most ``n``, else ``n`` of them evenly spaced, the first and
    the last included (``n = 1``: the last)."""
    if len(names) <= n:
        return list(names)
    if n == 1:
        return [names[-1]]
    return [names[round(i * (len(names) - 1) / (n - 1))] for i in range(n)]


def agreement_weighted(main: torch.Tensor, layer_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """``heatmap_fusion="agreement"``: the ``[B, H, W]`` map ``main`` times, pixel by pixel, the
    mean of the non-negative ``layer_maps`` each scaled to a maximum of 1 (an all-zero map
    stays 0)."""
    return main * sum(scaled_to_peak(m) for m in layer_maps) / len(layer_maps)


class AfI(ConceptExplainer):
    """Attacking for Interpretability: global occluders → FIS/CIS → meta-detectors → concepts.

    Args:
        model: a classifier returning logits; inputs in ``valid_range``.
        layers: the "middle layers" (dotted names); None = every ReLU output
            (:func:`middle_layers`).
        classes: class indices to explain; None = every class present in the fit data.
        l1_weight, lr, max_iter, noise, max_degrees, use_transform, valid_range: occluder
            optimisation (:func:`fit_occluders`); ``use_transform=False`` is the seed's ablation.
        holdout_fraction: share of each class's fit images held out to measure the occluders'
            attack success rate (not used to learn them).
        impression_layer: layer of the class impressions; None = automatic (the shallowest layer
            whose impressions the model recognises best, :func:`pick_impression_layer`).
        impression_candidates: with ``impression_layer=None``, the layers tried: every middle
            layer when there are at most this many, else this many spread evenly over them
            (the first and the last included). The seed picks the layer by eye among a
            network's few conv blocks; trying every one of a modern CNN's activations costs
            one impression optimisation each. On EfficientNet-Lite0's 33 ReLU6 calls (8
            photos, 2 CPU cores, 2026-12-07) the impressions took 72 s of a 144 s fit at 10
            steps each; at the default 200 steps a ``pyconcepts explain`` trying all 33 was
            stopped unfinished after 13.5 minutes, and with 8 candidates it took 6.2 minutes
            in all. The zoo models have 5 and 7, so 8 keeps their fits as they were.
        impression_steps, impression_lr, tv_weight, jitter: :func:`class_impressions`
            (``impression_steps=0`` skips them).
        n_probe: images per concept probe set and per benchmark set (concept world fits;
            100). The paper's probe sets are Broden-sized; with 40 the MMD estimates are
            noisier: measured on the concept world (docs/methods.md, 3 seeds), 40 → 100 ranks
            the defining concepts at precision@k 0.78 → 0.83 (cw-vgg) and 0.82 → 0.89
            (cw-resnet), for 7 → 11 s of fitting on cw-resnet.
        concept_direction: ``"raises"`` (default) counts a layer's MMD toward a concept's
            importance for a class only where the concept raises that class's meta-detector
            more than the fitted classes' mean detector; ``"any"`` counts every layer (the
            seed: MMD is a distance, so a concept that lowers the detector counted too). See
            :func:`~pyconcepts.explainers.afi.concept_importance` for the measured effect; the
            one used is ``concept_direction_`` after fitting.
        heatmap_layer: layer of the meta-detector heatmaps of ``explain``; None = the impression
            layer when its output is a spatial map, else the last middle layer that has one.
        heatmap_weights: ``"cis"`` (default) maps the target class's meta-detector, eq. 9,
            as it is; ``"contrast"`` maps it less the mean of all fitted classes'
            (``Σ_c (w_y^c − mean_k w_k^c)·A_c``, negative parts cut), which leaves out the
            channels every class relies on a little (background, edges) and gives sharper
            maps. The seed draws no heatmaps. Measured on the concept world (docs/methods.md,
            3 seeds, 200 test images, pointing / energy / ROC-AUC on the defining concepts,
            fused over the layers): eq. 9 0.94 / 0.42 / 0.88 on cw-vgg and 0.85 / 0.47 / 0.90
            on cw-resnet, the contrast 0.91 / 0.55 / 0.82 and 0.83 / 0.52 / 0.84 (Grad-CAM
            0.78 / 0.28 / 0.84 and 0.82 / 0.39 / 0.88): the contrast's extra energy is
            sharpness, and it orders the pixels worse. (Measured before the fallback of
            :func:`fit_occluders`' transform check; with it eq. 9 scores 0.97 / 0.44 / 0.90
            and 0.94 / 0.53 / 0.94, and 0.97 / 0.44 / 0.90 and 0.93 / 0.53 / 0.94 since the
            fit's batched passes, docs/methods.md.) On EfficientNet-Lite0's cat|espresso
            picture the contrast did better (mass on the cat half 0.96 against 0.86; Grad-CAM
            0.87). With one fitted class the contrast is 0, so the map is eq. 9's.
        heatmap_fusion: ``"agreement"`` (default) weights the heatmap layer's class map, pixel
            by pixel, by the mean over every spatial middle layer (``fusion_layers_``) of that
            layer's class map scaled to a maximum of 1: where the class's meta-detectors of all
            depths agree. ``"single"`` keeps the heatmap layer's map alone. Why: the deep
            layer's map says which part carries the class but is coarse, the shallow layers'
            maps are sharp but some fire off the object; the product keeps what both see, and
            uses no choice of layer (no criterion without ground truth picks one, see
            docs/methods.md). A pixel the heatmap layer shows stays shown (the mean includes
            that layer). Measured on the concept world with eq. 9's maps (3 seeds, before the
            transform-check fallback), pointing / energy / AUC: alone 0.72 / 0.28 / 0.85 and
            0.78 / 0.33 / 0.87, fused 0.94 / 0.42 / 0.88 and 0.85 / 0.47 / 0.90 (Grad-CAM
            fused the same way 0.74 / 0.40 / 0.83 and 0.89 / 0.60 / 0.90).
        seed: randomness.
        batch_size: images per forward pass of the model, in every step (in the occluder
            optimisation an image and its transformed copy count as two; the passes'
            gradients are summed). It bounds the fit's memory, not its result. Until
            2026-12-07 the occluder optimisation sent every used image through at once (on
            EfficientNet-Lite0 at 224 px about 89 MiB of peak memory per image and copy: 23
            used photos took 4.1 GiB) and the other passes took 64 images (the importance
            scores of 64 photos of one class peaked at 3,470 MiB in 5.3 s, 1,478 MiB in 2.2 s
            at 16; the concept importance of 32 + 32 photos 1,613 MiB, 1,148 MiB at 16). On
            the concept world 16 is faster too (scoreboard settings: cw-vgg 8.1 → 7.1 s,
            cw-resnet 10.0 → 9.4 s against 64).
        keep_fis: keep eq. 7's per-neuron scores as ``fis_`` (and in saved files). Off by
            default: only their channel sums (the CIS, eq. 8) are used, and they take K times
            the model's activation size — 23.5 MiB a class on EfficientNet-Lite0 at 224 px,
            23 GiB for 1,000 classes — where the CIS take K times its channel count.
        class_names: names of the model's classes (default: the data's, the model's, or
            ``class_i``).
        max_images: use at most this many fit images (None: all of them).

    ``valid_range`` is the (low, high) pixel range the occluded images and impressions are
    clipped to; None (default) takes the fit images' own minimum and maximum, so normalised
    inputs work as they are. Fit images outside a given range are refused.

    Fitted state: ``delta_`` ``[K,C,H,W]``, ``attack_success_`` (held-out) and
    ``train_success_`` ``[K]``, ``occluder_iterations_``/``occluder_converged_`` ``[K]``,
    ``cis_`` (layer → ``[K, C]``), ``fis_`` (layer → ``[K, ...]``; ``{}`` unless ``keep_fis``),
    ``impressions_`` (layer → ``[K,C,H,W]``), ``impression_layer_``, ``impression_rates_``,
    ``heatmap_layer_``, ``fusion_layers_`` (the spatial middle layers), ``concept_importance_``
    ``[K, M]`` (``concept_direction_``) and ``concept_mmd_`` ``[L, K, M]`` (when probe sets are
    given or the data is a concept world).

    ``explain`` returns global concept importance of each image's target class as
    ``concept_scores``, the target class's meta-detector map in ``heatmap_layer_`` (eq. 9, or
    less the fitted classes' mean with ``heatmap_weights="contrast"``; upsampled, negative
    parts cut; weighted by the ``fusion_layers_``' agreement with
    ``heatmap_fusion="agreement"``) as ``class_maps``, and in ``extras``
    ``class_scores [B, K]`` (every fitted class's mean meta-detector activation). AfI has no
    per-concept maps. The ONNX graph has the same outputs.
    """

    method = "afi"
    onnx_outputs = ("logits", "concept_scores", "class_maps", "class_scores")

    def __init__(
        self,
        model: nn.Module,
        layers: Optional[Sequence[str]] = None,
        classes: Optional[Sequence[int]] = None,
        *,
        l1_weight: float = 10.0,
        lr: float = 0.01,
        max_iter: int = 300,
        noise: float = 0.04,
        max_degrees: float = 5.0,
        use_transform: bool = True,
        valid_range: Optional[Sequence[float]] = None,
        holdout_fraction: float = 0.25,
        impression_layer: Optional[str] = None,
        impression_candidates: int = 8,
        impression_steps: int = 200,
        impression_lr: float = 0.05,
        tv_weight: float = 1.0,
        jitter: int = 2,
        n_probe: int = 100,
        concept_direction: str = "raises",
        heatmap_layer: Optional[str] = None,
        heatmap_weights: str = "cis",
        heatmap_fusion: str = "agreement",
        seed: int = 0,
        batch_size: int = 16,
        keep_fis: bool = False,
        class_names: Optional[Sequence[str]] = None,
        max_images: Optional[int] = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.classes = classes
        self.l1_weight = l1_weight
        self.lr = lr
        self.max_iter = max_iter
        self.noise = noise
        self.max_degrees = max_degrees
        self.use_transform = use_transform
        self.valid_range = valid_range
        self.holdout_fraction = holdout_fraction
        self.impression_layer = impression_layer
        self.impression_candidates = impression_candidates
        self.impression_steps = impression_steps
        self.impression_lr = impression_lr
        self.tv_weight = tv_weight
        self.jitter = jitter
        self.n_probe = n_probe
        self.concept_direction = concept_direction
        self.heatmap_layer = heatmap_layer
        self.heatmap_weights = heatmap_weights
        self.heatmap_fusion = heatmap_fusion
        self.seed = seed
        self.batch_size = batch_size
        self.keep_fis = keep_fis
        self.class_names = class_names
        self.max_images = max_images

    # ---- fit ------------------------------------------------------------------------------
    @property
    def layer(self) -> str:
        """The layer of ``explain``'s heatmaps (recorded in exports); set by ``fit``."""
        return self.heatmap_layer_

    @property
    def _range(self) -> ValidRange:
        lo, hi = self.valid_range_
        return float(lo), float(hi)

    def _resolve_range(self, images: torch.Tensor) -> tuple[float, float]:
        low, high = float(images.min()), float(images.max())
        if self.valid_range is None:
            if low >= high:
                raise ValueError("data: every pixel has the same value; pass valid_range")
            return low, high
        lo, hi = (float(v) for v in self.valid_range)
        if not lo < hi:
            raise ValueError(
                f"valid_range: expected (low, high) with low < high, got {self.valid_range}"
            )
        if low < lo or high > hi:
            raise ValueError(
                f"data: pixel values span [{low:.4g}, {high:.4g}], outside valid_range "
                f"{tuple(self.valid_range)}; pass the range of the model's inputs (None: the "
                "data's own range)"
            )
        return lo, hi

    def fit(
        self,
        data: object,
        probes: Optional[Sequence[torch.Tensor]] = None,
        benchmarks: Optional[Sequence[torch.Tensor]] = None,
        concept_names: Optional[Sequence[str]] = None,
        *,
        map_classes: Optional[CallMap] = None,
        progress: bool = True,
    ) -> AfI:
        """Learn occluders, importance scores, impressions and (given probes) concept importance.

        ``data``: a :class:`ConceptWorld` (probe sets then come from its ground truth), an
        ``(images, labels)`` pair, or anything :func:`pyconcepts.data.iter_batches` accepts with
        labels. ``probes[m]``/``benchmarks[m]``: images with / without concept m.
        ``map_classes``: optimise each class's occluder on its own through this map (e.g.
        :func:`pyconcepts.distributed.ray_map` over Ray tasks) instead of all classes batched
        here; see :func:`fit_occluders`.
        ``progress``: a bar over the class impressions' layers (the longest step).
        """
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction: expected in [0, 1), got {self.holdout_fraction}")
        check_positive_ints(
            impression_candidates=self.impression_candidates, batch_size=self.batch_size
        )
        _check_heatmap_weights(self.heatmap_weights)
        _check_heatmap_fusion(self.heatmap_fusion)
        if self.concept_direction not in ("raises", "any"):
            raise ValueError(
                f"concept_direction: expected 'raises' or 'any', got {self.concept_direction!r}"
            )
        images, labels = _collect(data, self.batch_size, self.max_images)
        device = self._model_device()
        images, labels = images.to(device), labels.to(device)
        images = self._check_images(images)
        self.valid_range_ = self._resolve_range(images)
        self.model.eval()
        with torch.no_grad():
            n_classes = int(self.model(images[:1]).shape[1])
        classes = explained_classes(
            self.classes if self.classes is not None else torch.unique(labels).tolist(), n_classes
        )
        given = self.class_names
        if given is None:
            given = getattr(data, "class_names", None)
        class_names = class_names_of(self.model, n_classes, None if given is None else list(given))
        chosen = self.layers or middle_layers(self.model, images[:1])
        layers = FeatureExtractor(self.model, list(chosen)).names
        train, held = self._split(labels, classes)
        vr = self._range
        fit = fit_occluders(
            self.model, images[train], labels[train], classes,
            l1_weight=self.l1_weight, lr=self.lr, max_iter=self.max_iter, noise=self.noise,
            max_degrees=self.max_degrees, use_transform=self.use_transform, valid_range=vr,
            seed=self.seed, map_classes=map_classes, batch_size=self.batch_size,
        )  # fmt: skip
        self.classes_, self.layers_, self.n_classes_ = classes, layers, n_classes
        self.delta_ = fit.delta
        self.occluder_iterations_, self.occluder_converged_ = fit.iterations, fit.converged
        self.n_used_ = [int(((labels[train] == c) & fit.used).sum()) for c in classes]
        self.train_success_ = self._attack_success(images[train], labels[train])
        self.attack_success_ = self._attack_success(images[held], labels[held])
        used = train.nonzero().flatten()[fit.used]
        if not len(used):
            raise ValueError(
                f"data: the model classifies no training image of classes {classes} correctly "
                "(also under the transform t): the occluders have nothing to learn from"
            )
        self.fis_, self.cis_ = importance_scores(
            self.model, layers, images[used], labels[used], classes, self.delta_, vr,
            self.batch_size, keep_fis=self.keep_fis,
        )  # fmt: skip
        self._fit_impressions(images[:1], progress)
        self.class_names_ = class_names
        if probes is None and isinstance(data, ConceptWorld):
            probes, benchmarks = probe_sets(data, self.n_probe, self.seed)
            concept_names = concept_names or list(data.concepts)
        self.concept_names_: list[str] = []
        self.concept_direction_ = self.concept_direction
        self.concept_importance_ = torch.zeros(len(classes), 0, dtype=torch.float64)
        self.concept_mmd_ = torch.zeros(len(layers), len(classes), 0, dtype=torch.float64)
        if probes is not None:
            if benchmarks is None:
                raise ValueError("benchmarks: expected one benchmark set per probe set, got None")
            self.concept_importance_, self.concept_mmd_ = concept_importance(
                self.model, layers, self.cis_, probes, benchmarks, self.batch_size,
                self.concept_direction,
            )  # fmt: skip
            names = concept_names or [f"concept_{m}" for m in range(len(probes))]
            if len(names) != len(probes):
                raise ValueError(f"concept_names: expected {len(probes)} names, got {len(names)}")
            self.concept_names_ = list(names)
        self._record_fit(images)
        return self

    def _split(
        self, labels: torch.Tensor, classes: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class, the last ``holdout_fraction`` of its images (in data order) is held out."""
        held = torch.zeros_like(labels, dtype=torch.bool)
        for c in classes:
            idx = (labels == c).nonzero().flatten()
            n_held = math.floor(len(idx) * self.holdout_fraction)
            if n_held:
                held[idx[len(idx) - n_held :]] = True
        return ~held, held

    def _fit_impressions(self, example: torch.Tensor, progress: bool) -> None:
        self.impressions_: dict[str, torch.Tensor] = {}
        self.impression_rates_: dict[str, float] = {}
        layers = (
            [self.impression_layer]
            if self.impression_layer
            else spread(self.layers_, self.impression_candidates)
        )
        if self.impression_layer and self.impression_layer not in self.layers_:
            raise ValueError(
                f"impression_layer: expected one of the middle layers {self.layers_}, "
                f"got {self.impression_layer!r}"
            )
        if self.impression_steps > 0:
            for name in tqdm(layers, desc="AfI impressions", unit="layer", disable=not progress):
                self.impressions_[name] = class_impressions(
                    self.model, name, self.cis_[name], example.shape[1:],
                    steps=self.impression_steps, lr=self.impression_lr, tv_weight=self.tv_weight,
                    jitter=self.jitter, valid_range=self._range, seed=self.seed,
                    batch_size=self.batch_size,
                )  # fmt: skip
            chosen, self.impression_rates_ = pick_impression_layer(
                self.model, layers, self.impressions_, self.classes_, self.batch_size
            )
        else:
            chosen = self.impression_layer or self.layers_[-1]
        self.impression_layer_ = chosen
        acts = layer_outputs(self.model, self.layers_, example, self.batch_size)
        spatial = [n for n in self.layers_ if acts[n].dim() == 4 and acts[n][0, 0].numel() > 1]
        self.heatmap_layer_ = self.heatmap_layer or self._spatial_default(chosen, spatial)
        if self.heatmap_layer_ not in self.layers_:
            raise ValueError(
                f"heatmap_layer: expected one of the middle layers {self.layers_}, "
                f"got {self.heatmap_layer_!r}"
            )
        self.fusion_layers_ = [n for n in self.layers_ if n in spatial or n == self.heatmap_layer_]

    def _spatial_default(self, chosen: str, spatial: Sequence[str]) -> str:
        """``chosen`` when its output is a spatial map (in ``spatial``), else the last middle
        layer with one (a dense layer's meta-detector is a single number: a 1×1 "map"), with a
        warning."""
        if chosen in spatial:
            return chosen
        if not spatial:
            raise ValueError(
                f"layers: none of the middle layers {self.layers_} outputs a spatial map; "
                "pass heatmap_layer (a conv layer's name)"
            )
        warnings.warn(
            f"heatmap_layer: the {'impression' if self.impressions_ else 'last middle'} layer "
            f"{chosen!r} has no spatial map; the heatmaps use {spatial[-1]!r} instead",
            stacklevel=5,  # _spatial_default, _fit_impressions, fit, the fit wrapper, caller
        )
        return spatial[-1]

    # ---- use ------------------------------------------------------------------------------
    def occlude(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each image minus the occluder of its label (images of unfitted classes unchanged)."""
        self._check_fitted()
        return self._occlude(images, labels)

    def attack_success(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per fitted class, the fraction of its correctly classified ``images`` whose prediction
        the class's occluder flips (NaN where there is none)."""
        self._check_fitted()
        return self._attack_success(images, labels)

    def _occlude(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        for k, c in enumerate(self.classes_):
            mask = labels == c
            out[mask] = occlude(images[mask], self.delta_[k].to(images.device), self._range)
        return out

    def _attack_success(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        clean = predict(self.model, images, self.batch_size)
        occl = predict(self.model, self._occlude(images, labels), self.batch_size)
        rates = [
            attack_success_rate(clean[labels == c], occl[labels == c], c) for c in self.classes_
        ]
        return torch.tensor(rates, dtype=torch.float64)

    def _importance_table(self) -> torch.Tensor:
        """Concept importance for every model class (rows of unfitted classes are 0)."""
        table = torch.zeros(self.n_classes_, len(self.concept_names_), dtype=torch.float64)
        table[torch.tensor(self.classes_, dtype=torch.long)] = self.concept_importance_
        return table

    def explain(self, images: torch.Tensor, targets: Optional[Any] = None) -> Explanation:
        """The target class's (default: the prediction's) concept importance and meta-detector
        map of each image; images of classes that were not fitted get a zero map, with a
        warning."""
        self._check_fitted()
        images = self._check_images(images).to(self._model_device())
        t = resolve_targets(targets, images.shape[0], self.n_classes_)
        out, t = self._explain_outputs(images, t)
        warn_unexplained(t, self.classes_)
        return Explanation.from_outputs(
            self.method, self.heatmap_layer_, self.concept_names_, self.class_names_, out, t
        )

    # ---- persistence / export --------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        tensors = {
            "delta": self.delta_,
            "occluder_iterations": self.occluder_iterations_,
            "occluder_converged": self.occluder_converged_,
            "train_success": self.train_success_,
            "attack_success": self.attack_success_,
            "concept_importance": self.concept_importance_,
            "concept_mmd": self.concept_mmd_,
            **{f"fis.{n}": t for n, t in self.fis_.items()},
            **{f"cis.{n}": t for n, t in self.cis_.items()},
            **{f"impressions.{n}": t for n, t in self.impressions_.items()},
        }
        state = {
            "classes_": self.classes_,
            "layers_": self.layers_,
            "n_classes_": self.n_classes_,
            "n_used_": self.n_used_,
            "impression_layer_": self.impression_layer_,
            "impression_rates_": self.impression_rates_,
            "heatmap_layer_": self.heatmap_layer_,
            "fusion_layers_": self.fusion_layers_,
            "concept_direction_": self.concept_direction_,
            "valid_range_": list(self.valid_range_),
            "class_names_": self.class_names_,
            "concept_names_": self.concept_names_,
        }
        return tensors, state

    def _set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, object]) -> None:
        device = self._model_device()
        for key, value in state.items():
            setattr(self, key, value)
        if "concept_direction_" not in state:  # saved before concept_direction: the seed's MMD
            self.concept_direction_ = self.concept_direction = "any"
        if "fusion_layers_" not in state:  # saved before heatmap_fusion: the single layer's map
            self.fusion_layers_ = [self.heatmap_layer_]
            self.heatmap_fusion = "single"
        self.delta_ = tensors["delta"].to(device)
        self.occluder_iterations_ = tensors["occluder_iterations"]
        self.occluder_converged_ = tensors["occluder_converged"]
        self.train_success_ = tensors["train_success"]
        self.attack_success_ = tensors["attack_success"]
        self.concept_importance_ = tensors["concept_importance"]
        self.concept_mmd_ = tensors["concept_mmd"]
        self.fis_, self.cis_, self.impressions_ = (
            {k[len(p) + 1 :]: v.to(device) for k, v in tensors.items() if k.startswith(p + ".")}
            for p in ("fis", "cis", "impressions")
        )
        if set(self.cis_) != set(self.layers_):
            raise ValueError(f"state: CIS for layers {sorted(self.cis_)}, expected {self.layers_}")

    def _onnx_module(self) -> nn.Module:
        return _AfIGraph(
            self.model,
            self.heatmap_layer_,
            self.cis_[self.heatmap_layer_],
            self._importance_table(),
            self.classes_,
            contrast=_check_heatmap_weights(self.heatmap_weights) == "contrast",
            fusion=[(n, self.cis_[n]) for n in self.fusion_layers_]
            if _check_heatmap_fusion(self.heatmap_fusion) == "agreement"
            else (),
        ).to(self._model_device())

    def _class_map(self, images: torch.Tensor, cls: int) -> torch.Tensor:
        maps = self.explain(images, [cls] * len(images)).class_maps
        assert maps is not None  # AfI always returns class maps
        return maps

    # ---- plots ----------------------------------------------------------------------------
    def plot_heatmaps(self, images: torch.Tensor, n: int = 4) -> Figure:
        """Per image (rows, at most ``n``): the image, then each fitted class's meta-detector
        heatmap over it (the explained class's title in bold)."""
        plt = pyplot()
        images = images[:n]
        e = self.explain(images)
        heat = torch.stack([self._class_map(images, c) for c in self.classes_], 1).cpu()
        k = len(self.classes_)
        fig, axes = plt.subplots(
            len(images), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(images)), squeeze=False
        )
        for i in range(len(images)):
            picture = displayable(images[i])
            axes[i, 0].imshow(picture)
            axes[i, 0].set_title(f"pred: {self.class_names_[int(e.targets[i])]}", fontsize=6)
            for j, c in enumerate(self.classes_):
                ax = axes[i, j + 1]
                ax.imshow(picture)
                ax.imshow(heat[i, j].numpy(), cmap="jet", alpha=0.5)
                weight = "bold" if c == int(e.targets[i]) else "normal"
                ax.set_title(self.class_names_[c], fontsize=5, fontweight=weight)
        for ax in axes.flat:
            ax.axis("off")
        fused = " × the middle layers' agreement" if self.heatmap_fusion == "agreement" else ""
        fig.suptitle(f"AfI meta-detectors at {self.heatmap_layer_}{fused}", fontsize=8)
        fig.tight_layout()
        return fig

    def plot_impressions(self) -> Figure:
        """Top row: class impressions at ``impression_layer_``; bottom row: the occluders δ
        (scaled to [0, 1]) with their held-out attack success rates."""
        plt = pyplot()
        k = len(self.classes_)
        fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.6), squeeze=False)
        imp = self.impressions_.get(self.impression_layer_)
        for j, c in enumerate(self.classes_):
            name = self.class_names_[c]
            if imp is not None:
                axes[0, j].imshow(imp[j].cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            axes[0, j].set_title(name, fontsize=5)
            d = self.delta_[j].cpu()
            d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-12)
            axes[1, j].imshow(d.permute(1, 2, 0).numpy())
            axes[1, j].set_title(f"ASR {float(self.attack_success_[j]):.2f}", fontsize=6)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle(f"class impressions ({self.impression_layer_}) and occluders", fontsize=8)
        fig.tight_layout()
        return fig


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_editing_curves(curves: dict[str, dict[str, torch.Tensor]]) -> Figure:
    """Accuracy (mean over classes) vs number of concepts added (left) / removed (right), one
    line per ranking, like the seed's Fig. 2."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0))
    for ax, mode, title in zip(
        axes, ("add", "remove"), ("adding top concepts", "removing top concepts")
    ):
        for name, table in curves[mode].items():
            mean = table.nanmean(0)
            ax.plot(range(len(mean)), mean.numpy(), marker="o", label=name)
        ax.set_xlabel("number of concepts")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
