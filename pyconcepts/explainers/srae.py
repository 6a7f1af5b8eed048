"""SRAE: sparse reconstruction autoencoder explanation module (Qi, Khorram & Li, 2018/2019).

For each explained class k an autoencoder embeds the layer features Z (default: the first dense
layer after its ReLU) into n x-features ``E_k(Z)`` (hidden layers 800-100-n), reads the logit
back linearly ``ȳ_k = v_k·E_k(Z) + c_k`` and decodes ``Z ≈ D_k E_k(Z) + d_k``. Per class, the loss
is the seed's Eq. (5)::

    faithfulness  Σ_i w_i (ȳ_i − ŷ_i)² / Σ_i w_i        (positives up-weighted, w = positive_weight)
  + β · mean_d log(1 + q·Q_d),  Q_d = mean_i (D E(Z_i) − Z_i)_d²     (sparse reconstruction)
  + η · 1/(n(n−1)) Σ_{l≠l'} cos(E_l, E_l')²  over the batch         (pull-away term)
  + λ1‖θ‖² + λ2‖θ̃‖² + λ3‖v‖²                                        (encoder, decoder, read-out)

All classes are one grouped model: every weight has a leading class axis and the forward pass is
batched matmuls, so one Adam run trains ``class_batch_size`` classes at once (the per-class losses
are summed; parameters are disjoint and Adam is element-wise, so each class follows exactly the
trajectory it would have alone, and each stops at its own early stop). Each class sees its own
positives/negatives through a ``[K, N]`` sample mask.

Choices where the paper is silent (all parameters, see docs/methods.md): Z is standardised per
dimension (folded into the first layer for excitation backprop, so heatmaps are exact); hidden
layers use ReLU and the x-layer is linear; the decoder is one linear map E → Z; β=1, q=10 (the
paper's Fig. 3c), η=0.5, λ=1e-4; positives weighted by n_neg/n_pos of the class; early stopping
keeps, per class, the weights of the epoch with the best validation faithfulness.

Baselines of the paper's tables are the same model with other losses (``variant``): ``"nn"``
faithfulness only, ``"sae"`` faithfulness + plain mean squared reconstruction, ``"cae"`` plain
reconstruction only (its read-out is fitted on the frozen x-features so F_reg is defined).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, cast

import torch
from torch import nn

from pyconcepts.attribution.excitation import excitation_backprop
from pyconcepts.data.batches import iter_batches
from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.base import ConceptExplainer, class_names_of
from pyconcepts.explainers.calls import CallMap
from pyconcepts.explainers.layout import (
    concept_columns,
    explained_classes,
    resolve_targets,
    scaled_to_peak,
    smooth,
    target_rows,
    warn_unexplained,
)
from pyconcepts.explainers.srae_training import (
    GroupedAutoencoder,
    LossConfig,
    class_samples,
    train_grouped,
)
from pyconcepts.explanation import Explanation, combine_maps, scores_of_columns
from pyconcepts.models.features import FeatureExtractor, resolve_layer
from pyconcepts.models.layers import ModelLayers, discover_layers
from pyconcepts.reference.excitation import GatheredLinear, chain_of, excitation_backprop_chain


class _Standardised(nn.Module):
    """Group k's encoder as plain Linear layers with the standardisation of Z folded into the
    first one — the x-features of raw (non-negative) Z, as excitation backprop needs."""

    def __init__(self, ae: GroupedAutoencoder, k: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        layers: list[nn.Module] = []
        n_layers = len(ae.encoder_weights)
        for i in range(n_layers):
            w = ae.encoder_weights[i][k].detach().t()  # [out, in]
            b = ae.encoder_biases[i][k].detach()
            if i == 0:
                b = b - w @ (mean / std)
                w = w / std[None, :]
            lin = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            layers.append(lin)
            if i < n_layers - 1 or ae.x_activation == "relu":
                layers.append(nn.ReLU())
        self.encoder = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.encoder(z)


class _ThroughLayer(nn.Module):
    """images → head(flattened Z at ``layer``): the model up to Z, then an SRAE encoder."""

    def __init__(self, model: nn.Module, layer: str, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head
        self.fx = FeatureExtractor(model, [layer], detach=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.fx(images)[self.fx.names[0]]
        return self.head(z.flatten(1))


class _OnnxHead(nn.Module):
    """images → (logits, contributions v·E of the predicted class, c-MWP heatmaps of its
    x-features, E of every class, ȳ of every class), heatmaps by the forward-only twin of
    excitation backprop (the model must be a chain of supported layers)."""

    classes: torch.Tensor

    def __init__(self, explainer: SRAE) -> None:
        super().__init__()
        example = torch.rand(1, explainer.n_features_in_, *explainer.input_size_)
        example = example.to(explainer._model_device())
        chain = chain_of(explainer.model, example)
        names = [name for name, _ in chain]
        self.z_index = _chain_index(names, resolve_layer(explainer.model, explainer.layer_)[0])
        self.stop: Optional[int] = None
        if explainer.heatmap_layer_ is not None:
            stop_name, _ = resolve_layer(explainer.model, explainer.heatmap_layer_)
            if stop_name not in names[: self.z_index + 1]:
                raise ValueError(f"heatmap_layer: {stop_name!r} must be a leaf layer below Z")
            self.stop = names.index(stop_name)
        self.model_chain = nn.ModuleList([m for _, m in chain])
        ae = explainer.autoencoder_
        mean, std = explainer.z_mean_, explainer.z_std_
        head: list[nn.Module] = [nn.Flatten()]
        n_layers = len(ae.encoder_weights)
        for i in range(n_layers):
            w, b = ae.encoder_weights[i].detach(), ae.encoder_biases[i].detach()
            if i == 0:  # standardisation folded in: the head takes raw, non-negative Z
                b = b - torch.einsum("d,kdo->ko", mean / std, w)
                w = w / std[None, :, None]
            head.append(GatheredLinear(w, b))
            if i < n_layers - 1 or ae.x_activation == "relu":
                head.append(nn.ReLU())
        self.head = nn.ModuleList(head)
        self.readout_weight = nn.Parameter(ae.readout_weight.detach().clone(), requires_grad=False)
        self.readout_bias = nn.Parameter(ae.readout_bias.detach().clone(), requires_grad=False)
        self.register_buffer("classes", torch.tensor(explainer.classes_, dtype=torch.long))
        self.n_features = explainer.n_features
        self.sigma = explainer._sigma(explainer.input_size_)
        self.logit_weight = _check_logit_weight(explainer.logit_map_weight)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        acts = [images]
        for link in self.model_chain:
            acts.append(link(acts[-1]))
        logits, z = acts[-1], acts[self.z_index + 1].flatten(1)
        k = self.classes.shape[0]
        # x-features of every class: the head with each class's weights
        e_all = []
        for group in range(k):
            h = z
            for link in self.head:
                if isinstance(link, GatheredLinear):
                    link.select(torch.full_like(logits[:, 0], group, dtype=torch.long))
                h = link(h)
            e_all.append(h)
        e = torch.stack(e_all, 1)  # [B, K, n]
        approx = (e * self.readout_weight[None]).sum(-1) + self.readout_bias[None]
        hit, row = target_rows(logits.argmax(1), self.classes)
        scores = (e * self.readout_weight[None] * hit[..., None].to(e.dtype)).flatten(1)
        for link in self.head:
            if isinstance(link, GatheredLinear):
                link.select(row)
        targets = torch.arange(self.n_features, device=images.device)[None].expand(
            images.shape[0], -1
        )
        chain = [*self.model_chain[: self.z_index + 1], *self.head]
        maps = excitation_backprop_chain(
            chain, images, targets, stop=self.stop, size=images.shape[-2:]
        )
        explained = hit.any(1).to(maps.dtype)
        maps = normalise_maps(smooth(maps, self.sigma)) * explained[:, None, None, None]
        logit_map = excitation_backprop_chain(
            list(self.model_chain), images, logits.argmax(1)[:, None], stop=self.stop,
            size=images.shape[-2:],
        )  # fmt: skip
        b = torch.arange(images.shape[0], device=images.device)
        return layout_outputs(
            logits, scores, maps, row, hit.any(1), e[b, row] * explained[:, None],
            approx[b, row] * explained, normalise_maps(smooth(logit_map, self.sigma))[:, 0],
            self.logit_weight,
        )  # fmt: skip


class SRAE(ConceptExplainer):
    """Sparse reconstruction autoencoder explanation module with c-MWP x-feature heatmaps.

    Args:
        model: the CNN to explain (eval mode).
        layer: where Z is read (flattened), in :class:`~pyconcepts.models.FeatureExtractor`'s
            syntax; default: the classifier's input (the penultimate vector, as the paper's
            "first dense layer after ReLU" is on the zoo models), found by
            :func:`~pyconcepts.models.layers.discover_layers`.
        classes: class indices to explain (one-vs-all each); None = the classes of the fit
            data (its labels, else the model's predictions).
        max_images: use at most this many fit images (None: all of them).
        n_features: x-features per class (n, the paper's 5).
        hidden: hidden sizes before the x-layer (the paper's 800-100).
        beta, q, eta, lambda1, lambda2, lambda3: weights of Eq. (5) (module docstring).
        variant: "srae", or a baseline of the paper's tables: "nn", "sae", "cae".
        x_activation: "linear" x-layer (default) or "relu".
        positive_weight: faithfulness weight of positives; None = n_neg/n_pos per class.
        n_positive, n_negative: per-class sample caps (None = all available).
        epochs, batch_size, lr, patience: Adam training with early stopping on the validation
            faithfulness of a held-out ``val_fraction`` of the fit data (``batch_size``: feature
            vectors per training step).
        image_batch_size: images per forward pass of the model when its features are read.
            The activations of that pass at input size are the fit's peak memory; until
            2026-12-07 the features were read ``batch_size`` (256) images at a time.
        class_batch_size: classes whose autoencoders are trained together (8). Each class has
            its own ~1.1 M weights at D = 1280 (EfficientNet-Lite0's Z), and training all
            of them in one Adam run held about 34 MiB per class (3.6 GiB for 100 classes,
            about 34 GiB for 1,000). In parts, one part's optimiser state and activations
            sit beside the weights, and the result is the same (:func:`train_grouped`).
            Why 8: on this 2-core CPU (``python -m bench.srae``) one epoch of 64 classes at
            D = 1280 took 13.3 s all at once, 9.2 s in parts of 32 and 5.2 s in parts of 8;
            10 classes at D = 256, 0.55 s and 0.48 s. On a GPU larger parts may pay; it is
            not measured.
        heatmap_layer: where c-MWP maps are read (a layer name after a ReLU, upsampled to the
            image). None: the input pixels when the fit images are non-negative (the paper),
            else the model's last feature map (c-MWP needs non-negative inputs; normalised
            images are not).
        heatmap_smoothing: standard deviation of a Gaussian blur of the c-MWP maps (x-feature
            and logit maps), as a fraction of the image's shorter side (default 1/64: 1 pixel
            on the concept world's 64-pixel images, 3.5 on 224-pixel ones); 0 keeps the raw
            c-MWP, as the paper shows it. Why: excitation backprop to the pixels gives
            speckled maps (0.6 % of the pixels above half the maximum on the concept world),
            whose single brightest pixel is a noisy place to point. Measured on the concept
            world (docs/methods.md, 3 seeds, 200 test images, pointing / energy / ROC-AUC on
            the defining concepts): cw-vgg 0.81 / 0.46 / 0.79 raw and 0.81 / 0.44 / 0.83
            smoothed, cw-resnet 0.91 / 0.42 / 0.84 and 0.87 / 0.42 / 0.92 (Grad-CAM
            0.78 / 0.28 / 0.84 and 0.82 / 0.39 / 0.88). The maps are renormalised to sum 1.
        logit_map_weight: share of the c-MWP map of the class logit (``logit_heatmap``) in the
            class map; the x-features' contribution-weighted map gets the rest, each scaled
            to peak 1 first. 0 gives the x-feature map alone (the paper shows only the
            x-features' maps; files saved before this option load with 0). Why 0.5: the
            x-features explain the approximation ȳ, not the logit, and on seeds where their
            five maps miss a part the class map points off it, while the logit's c-MWP map
            holds the model's own evidence but spreads it wider. Measured on the concept
            world (docs/methods.md, 3 seeds, 200 test images, pointing / energy / ROC-AUC on
            the defining concepts): cw-vgg 0.81 ± 0.06 / 0.44 / 0.83 alone, 0.94 ± 0.01 /
            0.50 / 0.89 at 0.5; cw-resnet 0.87 / 0.42 / 0.92 alone, 0.84 / 0.42 / 0.92 at
            0.5 (Grad-CAM 0.78 / 0.28 / 0.84 and 0.82 / 0.39 / 0.88).
        seed: initialisation, sampling and batching.
    """

    method = "srae"
    onnx_outputs = (
        "logits", "concept_scores", "heatmaps", "heatmap_concepts", "class_maps", "x_features",
        "approximation", "logit_heatmap",
    )  # fmt: skip

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[str] = None,
        classes: Optional[Sequence[int]] = None,
        n_features: int = 5,
        hidden: Sequence[int] = (800, 100),
        beta: float = 1.0,
        q: float = 10.0,
        eta: float = 0.5,
        lambda1: float = 1e-4,
        lambda2: float = 1e-4,
        lambda3: float = 1e-4,
        variant: str = "srae",
        x_activation: str = "linear",
        positive_weight: Optional[float] = None,
        n_positive: Optional[int] = None,
        n_negative: Optional[int] = None,
        epochs: int = 100,
        batch_size: int = 256,
        image_batch_size: int = 32,
        class_batch_size: int = 8,
        lr: float = 1e-3,
        patience: int = 10,
        val_fraction: float = 0.1,
        heatmap_layer: Optional[str] = None,
        heatmap_smoothing: float = 1 / 64,
        logit_map_weight: float = 0.5,
        seed: int = 0,
        class_names: Optional[Sequence[str]] = None,
        max_images: Optional[int] = None,
    ) -> None:
        self.model = model
        self.layer = layer
        self.classes = classes
        self.n_features = n_features
        self.hidden = hidden
        self.beta, self.q, self.eta = beta, q, eta
        self.lambda1, self.lambda2, self.lambda3 = lambda1, lambda2, lambda3
        self.variant = variant
        self.x_activation = x_activation
        self.positive_weight = positive_weight
        self.n_positive, self.n_negative = n_positive, n_negative
        self.epochs, self.batch_size, self.lr, self.patience = epochs, batch_size, lr, patience
        self.image_batch_size = image_batch_size
        self.class_batch_size = class_batch_size
        self.val_fraction = val_fraction
        self.heatmap_layer = heatmap_layer
        self.heatmap_smoothing = heatmap_smoothing
        self.logit_map_weight = logit_map_weight
        self.seed = seed
        self.class_names = class_names
        self.max_images = max_images

    # ---- features ------------------------------------------------------------------------
    def features(
        self, data: Any, batch_size: Optional[int] = None, max_images: Optional[int] = None
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """Z ``[N, D]`` (flattened ``layer`` output), logits ``[N, C]``, labels (or None) and
        the first image batch (for the input layout) of any data ``iter_batches`` accepts,
        ``batch_size`` images per forward pass (None: ``image_batch_size``)."""
        batch_size = self.image_batch_size if batch_size is None else batch_size
        zs, logits, labels, first = [], [], [], None
        fx: Optional[FeatureExtractor] = None
        with torch.no_grad():
            batches = iter_batches(data, batch_size, self._model_device(), max_images)
            for images, y in batches:
                images = self._check_images(images, "data")
                if fx is None:
                    first = images
                    fx = FeatureExtractor(self.model, [self._resolve_layers(images)])
                feats, out = fx(images, return_output=True)
                logits.append(out.float())
                zs.append(feats[fx.names[0]].flatten(1).float().clone())
                if y is not None:
                    labels.append(y)
        if first is None:
            raise ValueError("data: expected at least one image, got none")
        return torch.cat(zs), torch.cat(logits), (torch.cat(labels) if labels else None), first

    def _resolve_layers(self, example: torch.Tensor) -> str:
        """Z's layer (``layer_``), resolved on the first fit batch, and ``heatmap_layer_``."""
        if not hasattr(self, "layer_"):
            negative = bool((example < 0).any())
            given = self.layer is not None and (self.heatmap_layer is not None or not negative)
            found = None if given else discover_layers(self.model, example)
            layer = self.layer or cast(ModelLayers, found).penultimate
            self.layer_ = resolve_layer(self.model, layer)[0]
            default = found.feature_map if found is not None and negative else None
            self.heatmap_layer_ = self.heatmap_layer or default
        return self.layer_

    def _loss_config(self) -> LossConfig:
        return LossConfig(
            self.beta, self.q, self.eta, self.lambda1, self.lambda2, self.lambda3, self.variant
        )

    # ---- fit -----------------------------------------------------------------------------
    def fit(self, data: Any, progress: bool = True, map_parts: Optional[CallMap] = None) -> SRAE:
        """Train all classes' modules as one grouped model on ``data`` (images with labels; the
        model's predictions stand in for missing labels), ``class_batch_size`` classes at a
        time. ``map_parts`` runs those parts through a map instead of one after another, e.g.
        ``map_parts=pyconcepts.distributed.ray_map()``: one Ray task per part, the same
        weights (:func:`train_grouped`)."""
        config = self._loss_config()
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a value in [0, 1), got {self.val_fraction}")
        _check_smoothing(self.heatmap_smoothing)
        _check_logit_weight(self.logit_map_weight)
        for name in ("layer_", "heatmap_layer_"):  # resolved again on this fit's data
            vars(self).pop(name, None)
        check_positive_ints(
            batch_size=self.batch_size,
            image_batch_size=self.image_batch_size,
            class_batch_size=self.class_batch_size,
        )
        z, logits, labels, first = self.features(data, max_images=self.max_images)
        n_classes = logits.shape[1]
        if labels is None:
            labels = logits.argmax(1)
        labels = labels.to(z.device)
        classes = explained_classes(self.classes, n_classes, labels)
        gen = torch.Generator().manual_seed(self.seed)
        self.z_mean_ = z.mean(0)
        std = z.std(0) if z.shape[0] > 1 else torch.ones_like(self.z_mean_)
        self.z_std_ = std.clamp_min(1e-3 * float(std.mean()) + 1e-12)
        zs = (z - self.z_mean_) / self.z_std_
        target = logits[:, classes].t().contiguous()  # [K, N]
        mask, weight = class_samples(
            labels.cpu(), classes, self.n_positive, self.n_negative, self.positive_weight, gen
        )
        mask, weight = mask.to(z.device), weight.to(z.device)
        perm = torch.randperm(z.shape[0], generator=gen).to(z.device)
        n_val = round(self.val_fraction * z.shape[0])
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        val = None
        if n_val > 0:
            val = (zs[val_idx], target[:, val_idx], mask[:, val_idx], weight[:, val_idx])
        ae = GroupedAutoencoder(
            len(classes), zs.shape[1], self.hidden, self.n_features, self.x_activation, gen
        ).to(z.device)
        self.history_ = train_grouped(
            ae, zs[tr_idx], target[:, tr_idx], mask[:, tr_idx], weight[:, tr_idx], val, config,
            self.epochs, self.batch_size, self.lr, self.patience, gen, progress,
            self.class_batch_size, map_parts,
        )  # fmt: skip
        self.autoencoder_ = ae.eval()
        self.classes_ = classes
        self.class_names_ = class_names_of(self.model, n_classes, self.class_names)
        self.concept_names_ = x_feature_names(
            [self.class_names_[c] for c in classes], self.n_features
        )
        self._record_fit(first)
        return self

    # ---- inference -----------------------------------------------------------------------
    def _row(self, cls: int) -> int:
        if cls not in self.classes_:
            raise ValueError(f"targets: class {cls} is not explained (fitted: {self.classes_})")
        return self.classes_.index(cls)

    def transform(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x-features ``[K, B, n]`` and ȳ ``[K, B]`` of raw features z ``[B, D]``."""
        self._check_fitted()
        with torch.no_grad():
            e = self.autoencoder_.encode((z - self.z_mean_) / self.z_std_)
            return e, self.autoencoder_.readout(e)

    def x_feature_module(self, cls: int) -> nn.Module:
        """images → the n x-features of class ``cls`` (plain layers, for excitation backprop)."""
        self._check_fitted()
        head = _Standardised(self.autoencoder_, self._row(cls), self.z_mean_, self.z_std_)
        return _ThroughLayer(self.model, self.layer_, head.to(self.z_mean_.device))

    def heatmaps(self, images: torch.Tensor, cls: int) -> torch.Tensor:
        """c-MWP maps ``[B, n, H, W]`` of class ``cls``'s x-features, each summing to 1 (or 0)."""
        module = self.x_feature_module(cls)
        maps = excitation_backprop(
            module, images, list(range(self.n_features)),
            layer=None if self.heatmap_layer_ is None else f"model.{self.heatmap_layer_}",
            size=images.shape[-2:],
        )  # fmt: skip
        return normalise_maps(smooth(maps, self._sigma(images.shape[-2:])))

    def _sigma(self, size: Sequence[int]) -> float:
        """``heatmap_smoothing`` in pixels of images of ``size``."""
        return _check_smoothing(self.heatmap_smoothing) * min(int(n) for n in size)

    def explain(
        self, images: torch.Tensor, targets: Optional[Any] = None, heatmaps: bool = True
    ) -> Explanation:
        """For the explained class of each image (default: the prediction): the x-feature
        contributions ``v_i E_i`` (``concept_scores``: that class's columns, 0 elsewhere), the
        x-features' c-MWP heatmaps (``heatmaps [B, n, H, W]``, each summing to 1) and the
        class map (``class_maps``: their contribution-weighted sum mixed with the logit's map,
        see ``logit_map_weight``). Extras: ``x_features [B, n]``,
        ``approximation [B]`` (ȳ) and ``logit_heatmap [B, H, W]`` (c-MWP of the class logit).
        An image whose target is not an explained class gets zeros, with a warning (as in the
        ONNX graph). ``heatmaps=False`` skips the maps (scores only)."""
        self._check_fitted()
        images = self._check_images(images)
        z, logits, _, _ = self.features(images)
        given = resolve_targets(targets, images.shape[0], logits.shape[1])
        t = logits.argmax(1).cpu() if given is None else given
        warn_unexplained(t, self.classes_)
        known = torch.tensor(self.classes_)
        hit, rows = target_rows(t, known)
        explained = hit.any(1)
        e, approx = self.transform(z)
        e, approx = e.cpu(), approx.cpu()
        keep = explained.to(e.dtype)
        b = torch.arange(z.shape[0])
        e_t = e[rows, b] * keep[:, None]  # [B, n]
        weight = self.autoencoder_.readout_weight.detach().cpu()
        scores = torch.zeros(z.shape[0], len(known), self.n_features)
        scores[b, rows] = e_t * weight[rows]
        maps = torch.zeros(z.shape[0], self.n_features, *images.shape[-2:])
        logit_map = torch.zeros(z.shape[0], *images.shape[-2:])
        if heatmaps:
            for cls in t[explained].unique().tolist():
                sel = ((t == cls) & explained).nonzero().flatten()
                maps[sel] = self.heatmaps(images[sel], int(cls)).to(maps.dtype).cpu()
            logit_map = excitation_backprop(
                self.model, images, t.to(images.device), layer=self.heatmap_layer_,
                size=images.shape[-2:],
            )  # fmt: skip
            logit_map = normalise_maps(smooth(logit_map, self._sigma(images.shape[-2:])))
            logit_map = logit_map[:, 0].cpu()
        outputs = layout_outputs(
            logits.cpu(), scores.flatten(1), maps, rows, explained, e_t, approx[rows, b] * keep,
            logit_map, _check_logit_weight(self.logit_map_weight),
        )  # fmt: skip
        out = dict(zip(self.onnx_outputs, outputs))
        if not heatmaps:
            for name in ("heatmaps", "heatmap_concepts", "class_maps", "logit_heatmap"):
                del out[name]
        return Explanation.from_outputs(
            self.method, self.layer_, self.concept_names_, self.class_names_, out, t
        )

    # ---- persistence / export ------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"ae.{k}": v for k, v in self.autoencoder_.state_dict().items()}
        tensors["z_mean"], tensors["z_std"] = self.z_mean_, self.z_std_
        state = {
            "classes": self.classes_,
            "class_names": self.class_names_,
            "concept_names": self.concept_names_,
            "n_in": int(self.z_mean_.shape[0]),
            "layer": self.layer_,
            "heatmap_layer": self.heatmap_layer_,
            "heatmaps_smoothed": True,
            "class_map_with_logit": True,
        }
        return tensors, state

    def _set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.classes_ = [int(c) for c in state["classes"]]
        self.layer_, self.heatmap_layer_ = str(state["layer"]), state["heatmap_layer"]
        if "heatmaps_smoothed" not in state:  # saved before heatmap_smoothing: raw c-MWP maps
            self.heatmap_smoothing = 0.0
        if "class_map_with_logit" not in state:  # saved before logit_map_weight: x-features only
            self.logit_map_weight = 0.0
        with torch.device("meta"):  # the loaded tensors become the weights: no second copy
            ae = GroupedAutoencoder(
                len(self.classes_), int(state["n_in"]), self.hidden, self.n_features,
                self.x_activation,
            )  # fmt: skip
        ae.load_state_dict(
            {k[3:]: v for k, v in tensors.items() if k.startswith("ae.")}, assign=True
        )
        device = self._model_device()
        self.autoencoder_ = ae.to(device).eval()
        self.z_mean_, self.z_std_ = tensors["z_mean"].to(device), tensors["z_std"].to(device)
        self.class_names_ = list(state["class_names"])
        self.concept_names_ = list(state["concept_names"])

    def _onnx_module(self) -> nn.Module:
        return _OnnxHead(self)


def _chain_index(names: Sequence[str], z_layer: str) -> int:
    """Position in the model's chain of leaf layers whose output is Z (``"name:input"``: the
    link before ``name``), for the forward-only ONNX twin."""
    base, _, port = z_layer.partition(":")
    if base not in names or (port == "input" and names.index(base) == 0):
        raise ValueError(
            f"layer: {z_layer!r} must be a leaf layer of the model (or a leaf's input) for ONNX "
            "export"
        )
    return names.index(base) - (1 if port == "input" else 0)


def x_feature_names(class_names: Sequence[str], n_features: int) -> list[str]:
    """``"<class>/x<i>"`` for every explained class and x-feature, class-major."""
    return [f"{c}/x{i + 1}" for c in class_names for i in range(n_features)]


def layout_outputs(
    logits: torch.Tensor,
    scores: torch.Tensor,
    maps: torch.Tensor,
    rows: torch.Tensor,
    explained: torch.Tensor,
    x_features: torch.Tensor,
    approximation: torch.Tensor,
    logit_heatmap: torch.Tensor,
    logit_weight: float = 0.0,
) -> tuple[torch.Tensor, ...]:
    """SRAE's outputs in ``SRAE.onnx_outputs`` order from the explained class's x-feature
    ``maps [B, n, H, W]``, its row among the explained classes and whether it is one. The class
    map mixes the x-features' contribution-weighted map with ``logit_weight`` of the logit's
    (each scaled to peak 1; ``SRAE.logit_map_weight``); an unexplained image's stays 0."""
    columns = concept_columns(rows, maps.shape[1], explained[:, None])
    class_maps = combine_maps(maps, scores_of_columns(scores, columns))
    if logit_weight > 0:
        logit_part = scaled_to_peak(logit_heatmap) * explained.to(maps.dtype)[:, None, None]
        class_maps = (1 - logit_weight) * scaled_to_peak(class_maps) + logit_weight * logit_part
    return (
        logits, scores, maps, columns, class_maps, x_features, approximation, logit_heatmap,
    )  # fmt: skip


def _check_smoothing(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 0.5:
        raise ValueError(
            f"heatmap_smoothing: expected a fraction of the image side in [0, 0.5), got {value!r}"
        )
    return float(value)


def _check_logit_weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"logit_map_weight: expected a number in [0, 1], got {value!r}")
    return float(value)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its sum (the paper's S = C / Σ C); all-zero maps stay zero."""
    total = maps.flatten(2).sum(-1)[..., None, None]
    return torch.where(total > 0, maps / total.clamp_min(1e-30), torch.zeros_like(maps))
