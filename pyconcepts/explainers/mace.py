"""MACE: Model Agnostic Concept Extractor (Kumar et al., 2021).

For every class k, MACE learns C concept maps from a conv layer's feature maps (1×1 conv +
ReLU), a dense **embedding generator** shared by the class's C maps (flattened map → dense
layers → Q-dim tanh embedding), trained with the **semi-hard triplet loss** (eq. 1) so that
concept j's embeddings cluster across the class's images; a **relevance estimator**: a sigmoid
dense layer over the class's concatenated embeddings, fitted to the model's probability f_k
(eq. 2), whose per-concept terms r_jk = θ_jk · e_jk are the concept relevances; and an
**output generator**: a dense layer from all embeddings to z̃ ≈ z, the output of the model's
first dense layer, with L^D = ‖z − z̃‖² and L^O = KL(f(z̃) ‖ f(z)) through the frozen layers
after it. Total loss Σ_k (L_k^E + L_k^R) + L^D + L^O (weights are parameters, default 1).
After training, concepts are **pruned** with the supplementary S2 rules and the head is
fine-tuned. Choices the paper leaves open are parameters; see docs/methods.md § MACE.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pyconcepts.attribution.gradcam import grad_cam
from pyconcepts.data.batches import iter_batches
from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.base import ConceptExplainer, class_names_of
from pyconcepts.explainers.layout import (
    concept_columns,
    explained_classes,
    resolve_targets,
    select_columns,
    target_rows,
    upsample,
    warn_unexplained,
)
from pyconcepts.explanation import Explanation, combine_maps, scores_of_columns
from pyconcepts.metrics.saliency import binarize
from pyconcepts.models.features import FeatureExtractor, resolve_layer
from pyconcepts.models.layers import ModelLayers, discover_layers
from pyconcepts.ops import semihard_triplet_loss

_WithOutput = tuple[dict[str, torch.Tensor], torch.Tensor]
_GRAD_CHUNK = 8  # images per backward pass of map_init="gradient" (bounds its peak memory)

PRUNE_RULES = (
    "top_images_other_class",  # > S of the top-T images by relevance belong to another class
    "positive_on_most_images",  # positive relevance on more than prune_max_positive of images
    "covers_image",  # thresholded map covers >= prune_max_area of the image on average
    "rarely_positive_on_own_class",  # positive on < prune_min_own_positive of own-class images
)


def concept_maps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(1×1 conv): ``x [B,D,h,w]``, ``weight [M,D]``, ``bias [M]`` → ``[B,M,h,w]``.

    Uses the fused kernel ``pyconcepts.ops.concept_maps`` when it is available.
    """
    try:
        from pyconcepts.ops.concept_maps import concept_maps as fused
    except ImportError:
        return torch.relu(F.conv2d(x, weight[:, :, None, None], bias))
    out: torch.Tensor = fused(x, weight, bias)
    return out


def concept_names(class_names: Sequence[str], n_concepts: int) -> list[str]:
    """``"<class>/c<j>"`` for every class and concept, class-major (the K·C columns)."""
    return [f"{n}/c{j}" for n in class_names for j in range(n_concepts)]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with parameters not requiring gradients; both restored after."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def find_tail(model: nn.Module, dense_layer: str) -> nn.Module:
    """The layers that map the output of ``dense_layer`` to the logits.

    Walks up the layer's dotted path: inside every ``nn.Sequential`` ancestor the siblings after
    it follow; at the first other ancestor the walk stops (the dense block is then taken to be
    the last step of that module, as in VGG-style ``classifier`` heads). ``fit`` checks the
    result against the model's logits and raises if the model is not of that shape.
    """
    name, _, port = dense_layer.partition(":")
    if port == "input":  # z is the input of a layer: that layer starts the tail
        return nn.Sequential(model.get_submodule(name), find_tail(model, name))
    parts = dense_layer.split(".")
    after: list[nn.Module] = []
    for depth in range(len(parts) - 1, -1, -1):
        parent = model.get_submodule(".".join(parts[:depth])) if depth else model
        if not isinstance(parent, nn.Sequential):
            break
        names = [n for n, _ in parent.named_children()]
        after.extend(list(parent.children())[names.index(parts[depth]) + 1 :])
    return nn.Sequential(*after)


class _Head(nn.Module):
    """All of MACE's learned parameters, batched over the K classes."""

    active: torch.Tensor  # [K, C] 1 = kept, 0 = pruned
    rel_reference: torch.Tensor  # [K, C] what concept_scores measure relevance from
    map_reference: torch.Tensor  # [K, C] what the heatmaps measure each concept map from

    def __init__(self, k: int, c: int, d: int, hw: int, sizes: Sequence[int], z_dim: int) -> None:
        super().__init__()
        self.k, self.c = k, c
        self.map_weight = nn.Parameter(torch.randn(k * c, d) * d**-0.5)
        self.map_bias = nn.Parameter(torch.zeros(k * c))
        dims = [hw, *sizes]
        self.emb_weights = nn.ParameterList(
            [nn.Parameter(torch.randn(k, i, o) * i**-0.5) for i, o in zip(dims, dims[1:])]
        )
        self.emb_biases = nn.ParameterList([nn.Parameter(torch.zeros(k, 1, o)) for o in dims[1:]])
        q = dims[-1]
        self.rel_weight = nn.Parameter(torch.randn(k, c, q) * (c * q) ** -0.5)
        self.rel_bias = nn.Parameter(torch.zeros(k))
        self.out = nn.Linear(k * c * q, z_dim)
        self.register_buffer("active", torch.ones(k, c))
        self.register_buffer("rel_reference", torch.zeros(k, c))  # 0: the paper's r_jk
        self.register_buffer("map_reference", torch.zeros(k, c))  # 0: the paper's maps

    def start_along(self, directions: torch.Tensor) -> None:
        """Add each class's unit ``directions [K, D]`` to the (random, norm ≈ 1) weights of
        all its C concept maps, so they start as that class's Grad-CAM map."""
        with torch.no_grad():
            weight = self.map_weight.view(self.k, self.c, -1)
            weight += F.normalize(directions, dim=1)[:, None, :]

    def maps(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B,D,h,w]`` → concept maps ``[B,K,C,h,w]``."""
        m = concept_maps(feats, self.map_weight, self.map_bias)
        return m.view(m.shape[0], self.k, self.c, *m.shape[2:])

    def embed(self, maps: torch.Tensor) -> torch.Tensor:
        """Concept maps ``[B,K,C,h,w]`` → embeddings ``[B,K,C,Q]`` (tanh dense layers)."""
        e = maps.flatten(3).transpose(0, 1).flatten(1, 2)  # [K, B*C, hw]
        for w, b in zip(self.emb_weights, self.emb_biases):
            e = torch.tanh(torch.baddbmm(b, e, w))
        return e.view(self.k, maps.shape[0], self.c, -1).transpose(0, 1)

    def relevance(self, emb: torch.Tensor) -> torch.Tensor:
        """r_jk = θ_jk · e_jk ``[B,K,C]`` (0 for pruned concepts)."""
        return (emb * self.rel_weight).sum(-1) * self.active

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.maps(feats)
        emb = self.embed(maps)
        rel = self.relevance(emb)
        z_hat = self.out((emb * self.active[..., None]).flatten(1))
        return maps, emb, rel, z_hat


class _ExplainModule(nn.Module):
    """images (, targets) → MACE's outputs in ``MACE.onnx_outputs`` order for the explained
    class of each image (default: the prediction); ``explain`` and the ONNX export both run it.
    An image whose target is not an explained class gets zero scores and maps (−1 columns)."""

    classes: torch.Tensor

    def __init__(self, model: nn.Module, layer: str, head: _Head, classes: Sequence[int]) -> None:
        super().__init__()
        self.model, self.head = model, head
        self.fx = FeatureExtractor(model, [layer])
        self.register_buffer("classes", torch.tensor(list(classes), dtype=torch.long))

    def forward(
        self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, ...]:
        feats, logits = cast(_WithOutput, self.fx(images, return_output=True))
        x = next(iter(feats.values()))
        head = self.head
        maps = torch.relu(F.conv2d(x, head.map_weight[:, :, None, None], head.map_bias))
        emb = head.embed(maps.view(maps.shape[0], head.k, head.c, *maps.shape[2:]))
        rel = head.relevance(emb)
        if targets is None:
            targets = logits.argmax(1)
        hit, row = target_rows(targets, self.classes)
        scores = ((rel - head.rel_reference) * hit[..., None].to(rel.dtype)).flatten(1)
        columns = concept_columns(row, head.c, (head.active[row] > 0) & hit.any(1)[:, None])
        reference = scores_of_columns(head.map_reference.flatten()[None].expand_as(scores), columns)
        heatmaps = torch.relu(select_columns(maps, columns) - reference[..., None, None])
        heatmaps = upsample(heatmaps, images.shape[-2:])
        class_maps = combine_maps(heatmaps, scores_of_columns(scores, columns))
        return logits, scores, heatmaps, columns, class_maps, rel, emb


class MACE(ConceptExplainer):
    """MACE on any torch CNN: concept maps, embeddings and relevances per class.

    Args:
        model: the frozen classifier (any ``nn.Module`` mapping images to logits).
        layer: conv layer whose feature maps feed the concept maps (a name in
            :class:`~pyconcepts.models.FeatureExtractor`'s syntax); default: the model's last
            spatial feature map (:func:`~pyconcepts.models.layers.discover_layers`).
        dense_layer: the model's first dense layer (z); default: the first ``nn.Linear`` when
            it is not the classifier, else the classifier's input (a model whose only dense
            layer is its classifier would otherwise make z the logits themselves).
        classes: the class ids to explain (K of them); default: the classes of the fit data
            (its labels, else the model's predictions). Each explained class has its own maps,
            embedding generator and relevance terms, so memory grows with K.
        n_concepts: C concept maps per class (paper: 10).
        embedding_sizes: dense layer sizes of the embedding generator, the last is Q (authors'
            code: 128 → 64 → 32).
        margin: triplet margin α (paper: 1).
        negatives: ``"batch"`` — negatives of concept j are the class's other concepts in any
            image of the batch (the FaceNet rule, our kernel); ``"image"`` — only the other
            concepts of the anchor's own image (the paper's stricter wording).
        relevance_loss: ``"bce"`` — cross-entropy of σ(Σ_j r_jk) against f_k with both terms;
            ``"paper"`` — eq. 2 literally, −f_k log σ(·) only.
        w_embedding, w_relevance, w_dense, w_output: loss weights of L^E, L^R, L^D, L^O.
        lr: Adam learning rate (paper: 1e-4 on VGG16/AWA2).
        batch_size: cached feature maps per training step.
        image_batch_size: images per forward pass of the model when its activations are
            cached (that pass at input size is the fit's peak memory; until 2026-12-07 it was
            ``batch_size``).
        prune: apply the S2 pruning rules and fine-tune after ``fit``.
        prune_top_t, prune_top_s: rule 1 (paper: T = 10, S = 5).
        prune_max_positive: rule 2 (paper: 0.5).
        prune_max_area: rule 3 (paper: 0.95).
        prune_min_own_positive: rule 4 (paper: 0.05).
        map_threshold: a map pixel is "on" above this fraction of the map's maximum (rule 3,
            binary masks for metrics).
        epochs: training epochs (paper: 64).
        min_kept: concepts per class that pruning always keeps (those with the highest mean
            relevance on the class's own images), so an explained class never loses every map
            (the paper prunes without a floor; 0 restores that). A higher floor keeps concepts
            that rule 1 removes because classes share them: measured (docs/methods.md), half
            the concepts (5 of 10) ranks the concept world's used concepts better (precision@k
            0.65 / 0.68 → 0.70 / 0.71 with the centred relevance; maps as good) but spreads the
            class map of a real ImageNet photo off the object (0.81 → 0.33 of its mass on the
            cat), so the default stays 1.
        finetune_epochs: epochs of fine-tuning after pruning (default: a quarter of ``epochs``).
        relevance_reference: what ``explain``'s ``concept_scores`` measure a concept's relevance
            from. ``"mean"`` (default): ``r_jk(x) − r̄_jk``, r̄ the mean relevance over the fit
            images, i.e. how much the concept raises the class's score above an average image
            (IBD measures its contributions from the mean feature for the same reason);
            ``"zero"``: the paper's ``r_jk`` itself. Why: the relevance terms feed one sigmoid,
            so only their sum is pinned down; one concept's term can sit far below 0 on every
            image, its own class's included. Measured on the concept world (docs/methods.md,
            3 seeds): the concepts the model uses are ranked at precision@k 0.51 → 0.61
            (cw-vgg) and 0.60 → 0.68 (cw-resnet). The paper's ``r_jk`` stays in
            ``extras["relevance"]``, and pruning uses it.
        map_reference: what ``explain``'s heatmaps (and so ``class_maps``) measure each concept
            map from. ``"mean"`` (default): ``relu(M_jk(x) − m̄_jk)``, m̄ the map's mean value
            over the fit images and positions, i.e. where the concept is more present than on
            an average image (the maps' counterpart of ``relevance_reference``); ``"zero"``:
            the paper's maps ``M_jk`` themselves. Why: a concept map is a ReLU of a linear
            projection and keeps a level of response on the background of every image, which
            the relevance-weighted sum adds up. Measured on the concept world (docs/methods.md,
            3 seeds, cw-vgg / cw-resnet, random start): energy on the class-defining parts
            0.33 → 0.39 / 0.35 → 0.40, ROC-AUC 0.81 → 0.83 / 0.81 → 0.84, pointing unchanged;
            with ``map_init="gradient"`` energy 0.31 → 0.38 / 0.39 → 0.41. Pruning and
            :meth:`concept_maps_of` use the maps themselves.
        map_init: how the 1×1 conv of the concept maps starts. ``"gradient"`` (default): each
            of class k's C weight vectors is the usual random one (norm ≈ 1) plus the unit
            vector of the class's Grad-CAM weights averaged over its fit images (one extra
            forward and backward pass over the fit data), so every map starts as a
            class-relevant map and the triplet loss pulls the C maps apart from there;
            ``"random"``: the random start alone (the paper does not say how it starts). Why:
            from a random start the maps rarely become class-relevant in training, and the
            relevance weights random-looking maps. Measured on the concept world
            (docs/methods.md, 3 seeds, cw-vgg / cw-resnet, with ``map_reference="mean"``):
            precision@k against the used concepts 0.62 → 0.76 / 0.67 → 0.73, pointing
            0.75 → 0.78 / 0.79 → 0.82, ROC-AUC 0.83 → 0.88 / 0.84 → 0.88; on a real
            EfficientNet the cat's class map moved from the espresso to the cat.
        seed: initialisation and shuffling seed.
        class_names: names of the model's classes.
        max_images: use at most this many fit images (None: all of them).
    """

    method = "mace"
    onnx_outputs = (
        "logits", "concept_scores", "heatmaps", "heatmap_concepts", "class_maps", "relevance",
        "embeddings",
    )  # fmt: skip
    head_: _Head
    tail_: nn.Module

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[str] = None,
        dense_layer: Optional[str] = None,
        classes: Optional[Sequence[int]] = None,
        n_concepts: int = 10,
        embedding_sizes: Sequence[int] = (128, 64, 32),
        margin: float = 1.0,
        negatives: str = "batch",
        relevance_loss: str = "bce",
        w_embedding: float = 1.0,
        w_relevance: float = 1.0,
        w_dense: float = 1.0,
        w_output: float = 1.0,
        lr: float = 1e-4,
        batch_size: int = 64,
        image_batch_size: int = 32,
        prune: bool = True,
        prune_top_t: int = 10,
        prune_top_s: int = 5,
        prune_max_positive: float = 0.5,
        prune_max_area: float = 0.95,
        prune_min_own_positive: float = 0.05,
        map_threshold: float = 0.5,
        epochs: int = 64,
        min_kept: int = 1,
        finetune_epochs: Optional[int] = None,
        relevance_reference: str = "mean",
        map_reference: str = "mean",
        map_init: str = "gradient",
        seed: int = 0,
        class_names: Optional[Sequence[str]] = None,
        max_images: Optional[int] = None,
    ) -> None:
        self.model = model
        self.layer = layer
        self.dense_layer = dense_layer
        self.classes = classes
        self.n_concepts = n_concepts
        self.embedding_sizes = embedding_sizes
        self.margin = margin
        self.negatives = negatives
        self.relevance_loss = relevance_loss
        self.w_embedding = w_embedding
        self.w_relevance = w_relevance
        self.w_dense = w_dense
        self.w_output = w_output
        self.lr = lr
        self.batch_size = batch_size
        self.image_batch_size = image_batch_size
        self.prune = prune
        self.prune_top_t = prune_top_t
        self.prune_top_s = prune_top_s
        self.prune_max_positive = prune_max_positive
        self.prune_max_area = prune_max_area
        self.prune_min_own_positive = prune_min_own_positive
        self.map_threshold = map_threshold
        self.epochs = epochs
        self.min_kept = min_kept
        self.finetune_epochs = finetune_epochs
        self.relevance_reference = relevance_reference
        self.map_reference = map_reference
        self.map_init = map_init
        self.seed = seed
        self.class_names = class_names
        self.max_images = max_images

    # ---- configuration resolved against the model ------------------------------------------
    def _resolve(self, example: torch.Tensor) -> tuple[str, str]:
        if self.negatives not in ("batch", "image"):
            raise ValueError(f"negatives: expected 'batch' or 'image', got {self.negatives!r}")
        for name in ("relevance_reference", "map_reference"):
            value = getattr(self, name)
            if value not in ("mean", "zero"):
                raise ValueError(f"{name}: expected 'mean' or 'zero', got {value!r}")
        if self.map_init not in ("gradient", "random"):
            raise ValueError(f"map_init: expected 'gradient' or 'random', got {self.map_init!r}")
        if self.relevance_loss not in ("bce", "paper"):
            raise ValueError(
                f"relevance_loss: expected 'bce' or 'paper', got {self.relevance_loss!r}"
            )
        if self.n_concepts < 1 or not self.embedding_sizes:
            raise ValueError("n_concepts must be >= 1 and embedding_sizes non-empty")
        given = self.layer is not None and self.dense_layer is not None
        found = None if given else discover_layers(self.model, example)
        layer = self.layer if self.layer is not None else cast(ModelLayers, found).feature_map
        dense = self.dense_layer
        if dense is None:  # the first dense layer before the classifier, else its input
            linears = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
            head = cast(ModelLayers, found)
            dense = linears[0] if linears and linears[0] != head.classifier else head.penultimate
        return resolve_layer(self.model, layer)[0], resolve_layer(self.model, dense)[0]

    def _extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feature maps, z, logits) of a batch, without gradients, the model in eval mode."""
        fx = FeatureExtractor(self.model, [self.layer_, self.dense_layer_])
        with torch.no_grad(), frozen(self.model):
            feats, logits = cast(_WithOutput, fx(images, return_output=True))
        return feats[self.layer_], feats[self.dense_layer_], logits

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, data: Any, progress: bool = True, prune_data: Any = None) -> MACE:
        """Train MACE on ``data`` (images, (images, labels), a Dataset or batches) for
        ``epochs``; then prune on ``prune_data`` (default: ``data``) and fine-tune.

        The frozen model's activations are computed once and cached. Image labels decide which
        class's triplet loss an image feeds (the model's prediction when labels are absent).
        """
        epochs = self.epochs
        check_positive_ints(
            epochs=epochs, batch_size=self.batch_size, image_batch_size=self.image_batch_size
        )
        floor = self.min_kept
        if (
            isinstance(floor, bool)
            or not isinstance(floor, int)
            or not 0 <= floor <= self.n_concepts
        ):
            raise ValueError(
                f"min_kept: expected an int in [0, n_concepts={self.n_concepts}], got {floor!r}"
            )
        with frozen(self.model):
            return self._fit(data, epochs, progress, prune_data)

    def _fit(self, data: Any, epochs: int, progress: bool, prune_data: Any) -> MACE:
        cache, directions = self._cache(data, record=True)
        feats, z, logits, labels = cache
        n_out = logits.shape[1]
        self.classes_ = explained_classes(self.classes, n_out, labels)
        k = len(self.classes_)
        self.tail_ = find_tail(self.model, self.dense_layer_)
        with torch.no_grad():
            probe = self.tail_(z[:4])
        if probe.shape != logits[:4].shape or not torch.allclose(probe, logits[:4], atol=1e-4):
            raise ValueError(
                f"dense_layer: could not find the layers that map {self.dense_layer_!r} to the "
                "logits (they must follow it inside nn.Sequential containers)"
            )
        gen = torch.Generator().manual_seed(self.seed)
        _, d, h, w = feats.shape
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global state
            torch.manual_seed(self.seed)
            head = _Head(k, self.n_concepts, d, h * w, self.embedding_sizes, z.shape[1])
        if directions is not None:
            head.start_along(directions[self.classes_].to(head.map_weight))
        self.head_ = head.to(feats.device)
        self.class_names_ = class_names_of(self.model, n_out, self.class_names)
        self.concept_names_ = concept_names(
            [self.class_names_[c] for c in self.classes_], self.n_concepts
        )
        self.pruned_: dict[str, str] = {}
        self.history_: list[dict[str, float]] = []
        self._train(cache, epochs, gen, progress, "fit")
        if self.prune:
            pf, _, pl, plab = cache if prune_data is None else self._cache(prune_data)[0]
            self._prune(pf, pl, plab)
            ft = self.finetune_epochs if self.finetune_epochs is not None else max(1, epochs // 4)
            if ft:
                self._train(cache, ft, gen, progress, "fine-tune")
        self._set_references(feats)
        return self

    def _set_references(self, feats: torch.Tensor) -> None:
        """The fit images' mean relevance and mean map value of every concept, for the
        references chosen as ``"mean"`` (one pass in batches; the maps are not kept)."""
        head = self.head_
        rel_sum, map_sum = (
            torch.zeros_like(head.rel_reference),
            torch.zeros_like(head.map_reference),
        )
        with torch.no_grad():
            for f in feats.split(self.batch_size):
                maps, _, rel, _ = head(f)
                rel_sum += rel.sum(0)
                map_sum += maps.mean((3, 4)).sum(0)
        n = max(feats.shape[0], 1)
        if self.relevance_reference == "mean":
            head.rel_reference.copy_(rel_sum / n)
        if self.map_reference == "mean":
            head.map_reference.copy_(map_sum / n)

    def _cache(
        self, data: Any, record: bool = False
    ) -> tuple[tuple[torch.Tensor, ...], Optional[torch.Tensor]]:
        """The frozen model's (feature maps, z, logits, labels) over ``data``; with ``record``
        (the fit data) and ``map_init="gradient"`` also every class's mean Grad-CAM weight
        vector over its images ``[n_classes, D]`` (zero for a class without images)."""
        feats: list[torch.Tensor] = []
        zs, logits, labels = [], [], []
        gradients: Optional[torch.Tensor] = None
        batches = iter_batches(data, self.image_batch_size, self._model_device(), self.max_images)
        for images, lab in batches:
            images = self._check_images(images, "data")
            if record and not feats:
                self._record_fit(images)
                self.layer_, self.dense_layer_ = self._resolve(images)
            f, z, lg = self._extract(images)
            feats.append(f)
            zs.append(z.flatten(1))
            logits.append(lg)
            labels.append(lg.argmax(1) if lab is None else lab.to(lg.device).long().view(-1))
            if record and self.map_init == "gradient":
                if gradients is None:
                    gradients = f.new_zeros(lg.shape[1], f.shape[1])
                for part, ids in zip(images.split(_GRAD_CHUNK), labels[-1].split(_GRAD_CHUNK)):
                    alpha = grad_cam(self.model, self.layer_, part, ids, upsample=False).weights
                    gradients.index_add_(0, ids, alpha.to(gradients))
        if not feats:
            raise ValueError("data: expected at least one batch of images, got none")
        cache = torch.cat(feats), torch.cat(zs), torch.cat(logits), torch.cat(labels)
        if gradients is None:
            return cache, None
        counts = torch.bincount(cache[3], minlength=gradients.shape[0]).clamp_min(1)
        return cache, gradients / counts[:, None].to(gradients)

    def _losses(
        self, feats: torch.Tensor, z: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        head = self.head_
        _, emb, rel, z_hat = head(feats)
        probs = logits.softmax(1)[:, self.classes_]
        loss_e = feats.new_zeros(())
        for k, cls in enumerate(self.classes_):
            own = labels == cls
            if int(own.sum()) >= 2:
                loss_e = loss_e + self._triplet(F.normalize(emb[own, k], dim=-1))
        rel_logit = rel.sum(-1) + head.rel_bias
        if self.relevance_loss == "bce":
            loss_r = F.binary_cross_entropy_with_logits(rel_logit, probs, reduction="none")
        else:
            loss_r = -probs * F.logsigmoid(rel_logit)
        loss_r = loss_r.sum(1).mean()  # Σ_k, mean over the batch
        loss_d = F.mse_loss(z_hat, z)
        log_p_hat = F.log_softmax(self.tail_(z_hat), 1)
        loss_o = (log_p_hat.exp() * (log_p_hat - F.log_softmax(logits, 1))).sum(1).mean()
        total = (
            self.w_embedding * loss_e
            + self.w_relevance * loss_r
            + self.w_dense * loss_d
            + self.w_output * loss_o
        )
        return {"total": total, "E": loss_e, "R": loss_r, "D": loss_d, "O": loss_o}

    def _triplet(self, emb: torch.Tensor) -> torch.Tensor:
        """Semi-hard triplet loss of one class's normalised embeddings ``[B_k, C, Q]``."""
        b, c, _ = emb.shape
        if self.negatives == "batch":
            labels = torch.arange(c, device=emb.device).repeat(b)
            return semihard_triplet_loss(emb.reshape(b * c, -1), labels, self.margin)
        # "image": anchor (i, j), positive (i', j), negatives (i, j') for j' != j only.
        d_ap = torch.cdist(emb.transpose(0, 1), emb.transpose(0, 1)).pow(2)  # [C, B, B]
        d_an = torch.cdist(emb, emb).pow(2)  # [B, C, C]
        ap = d_ap.permute(1, 0, 2)[..., None]  # [B(i), C(j), B(i'), 1]
        an = d_an[:, :, None, :]  # [B(i), C(j), 1, C(j')]
        not_self = ~torch.eye(c, dtype=torch.bool, device=emb.device)[None, :, None, :]
        inf = torch.tensor(float("inf"), device=emb.device, dtype=emb.dtype)
        farther = (an > ap) & not_self
        closest = torch.where(farther, an, inf).amin(-1)
        farthest = torch.where(not_self, an, -inf).amax(-1)
        neg = torch.where(farther.any(-1), closest, farthest)
        pair = ~torch.eye(b, dtype=torch.bool, device=emb.device)[:, None, :]
        pair = pair.expand(b, c, b)
        return torch.relu(d_ap.permute(1, 0, 2) - neg + self.margin)[pair].mean()

    def _train(
        self, cache: tuple[torch.Tensor, ...], epochs: int, gen: torch.Generator, progress: bool,
        stage: str,
    ) -> None:  # fmt: skip
        feats, z, logits, labels = cache
        params = [p for p in self.head_.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.lr)
        n = feats.shape[0]
        bar = tqdm(range(epochs), desc=f"MACE {stage}", disable=not progress)
        for epoch in bar:
            sums: dict[str, float] = {}
            order = torch.randperm(n, generator=gen).to(feats.device)
            for idx in order.split(self.batch_size):
                losses = self._losses(feats[idx], z[idx], logits[idx], labels[idx])
                opt.zero_grad()
                losses["total"].backward()
                opt.step()
                for key, v in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(v.detach()) * len(idx) / n
            self.history_.append({"stage": stage, "epoch": epoch, **sums})  # type: ignore[dict-item]
            bar.set_postfix({k: f"{v:.3g}" for k, v in sums.items()})

    # ---- pruning --------------------------------------------------------------------------
    def _relevance_and_area(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Relevances ``[N, K, C]`` of the cached images and each concept's mean fraction of
        its map that is on ``[K, C]``, batch by batch: the maps of every image and class at
        once (as before 2026-12-07) took N·K·C·h·w values, 9.8 GB for 5,000 images of 1,000
        classes at 7 × 7."""
        k, c = self.head_.k, self.head_.c
        rels, on = [], torch.zeros(k, c, dtype=torch.float64, device=feats.device)
        with torch.no_grad():
            for f in feats.split(self.batch_size):
                maps, _, rel, _ = self.head_(f)
                rels.append(rel)
                on += binarize(maps, self.map_threshold).flatten(3).double().mean(3).sum(0)
        return torch.cat(rels), (on / max(feats.shape[0], 1)).float()

    def _prune(self, feats: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Supplementary S2's four rules; pruned concepts are masked out of every head."""
        rel, area = self._relevance_and_area(feats)
        c = self.head_.c
        positive = (rel > 0).float()  # [N, K, C]
        t = min(self.prune_top_t, rel.shape[0])
        for ki, cls in enumerate(self.classes_):
            own = labels == cls
            for j in range(c):
                top = rel[:, ki, j].topk(t).indices
                rules = [
                    int((labels[top] != cls).sum()) > self.prune_top_s,
                    float(positive[:, ki, j].mean()) > self.prune_max_positive,
                    float(area[ki, j]) >= self.prune_max_area,
                    bool(own.any())
                    and float(positive[own, ki, j].mean()) < self.prune_min_own_positive,
                ]
                hit = next((name for name, on in zip(PRUNE_RULES, rules) if on), None)
                if hit is not None:
                    self.pruned_[self.concept_names_[ki * c + j]] = hit
                    self.head_.active[ki, j] = 0.0
            self._keep_floor(ki, rel[own if bool(own.any()) else slice(None), ki])

    def _keep_floor(self, ki: int, rel: torch.Tensor) -> None:
        """Re-activate class ``ki``'s ``min_kept`` most relevant concepts (mean relevance
        over ``rel [N, C]``) when pruning left fewer."""
        active = self.head_.active[ki]
        missing = self.min_kept - int(active.sum())
        if missing <= 0:
            return
        mean = rel.mean(0).masked_fill(active > 0, float("-inf"))
        for j in mean.topk(missing).indices.tolist():
            self.pruned_.pop(self.concept_names_[ki * self.head_.c + j], None)
            active[j] = 1.0

    # ---- explaining ---------------------------------------------------------------------
    def explain(self, images: torch.Tensor, targets: Optional[Any] = None) -> Explanation:
        """Per image, for the explained class (default: the prediction): the relevance of its
        kept concepts, measured from ``relevance_reference`` (``concept_scores``: that class's
        columns, 0 elsewhere), their maps measured from ``map_reference`` at
        image size (``heatmaps [B, C, H, W]``, pruned concepts −1 in ``heatmap_concepts``) and
        their relevance-weighted sum (``class_maps``). ``extras``: ``relevance [B, K, C]`` and
        ``embeddings [B, K, C, Q]`` of every explained class. An image whose target is not an
        explained class gets zeros, with a warning."""
        self._check_fitted()
        images = self._check_images(images).to(self._model_device())
        t = resolve_targets(targets, images.shape[0], len(self.class_names_))
        with frozen(self.model):
            out, t = self._explain_outputs(images, t)
        warn_unexplained(t, self.classes_)
        return Explanation.from_outputs(
            self.method, self.layer_, self.concept_names_, self.class_names_, out, t
        )

    def concept_maps_of(
        self, images: torch.Tensor, upsample: bool = True, pruned: bool = True
    ) -> torch.Tensor:
        """Concept maps ``[B,K,C,H,W]`` of images (input size when ``upsample``) as the model
        computes them, before ``map_reference`` is subtracted; pruned concepts' maps are 0
        unless ``pruned=False``."""
        self._check_fitted()
        feats, _, _ = self._extract(self._check_images(images).to(self._model_device()))
        with torch.no_grad():
            maps = torch.cat([self.head_.maps(f) for f in feats.split(self.batch_size)])
        if upsample:
            b, k, c = maps.shape[:3]
            maps = F.interpolate(
                maps.flatten(1, 2), size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            maps = maps.view(b, k, c, *images.shape[-2:])
        return maps * self.head_.active[None, :, :, None, None] if pruned else maps

    # ---- persistence / ONNX ---------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"head.{n}": t.detach() for n, t in self.head_.state_dict().items()}
        state = {
            "layer": self.layer_, "dense_layer": self.dense_layer_, "classes": self.classes_,
            "d": self.head_.map_weight.shape[1], "hw": self.head_.emb_weights[0].shape[1],
            "z_dim": self.head_.out.out_features, "pruned": self.pruned_,
            "class_names": self.class_names_, "history": self.history_,
        }  # fmt: skip
        return tensors, state

    def _set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.layer_, self.dense_layer_ = state["layer"], state["dense_layer"]
        self.classes_ = [int(c) for c in state["classes"]]
        with torch.device("meta"):  # the loaded tensors become the weights: no second copy
            head = _Head(
                len(self.classes_), self.n_concepts, state["d"], state["hw"],
                self.embedding_sizes, state["z_dim"],
            )  # fmt: skip
        params = {n[5:]: t for n, t in tensors.items() if n.startswith("head.")}
        if "rel_reference" not in params:  # saved before relevance_reference: the paper's r_jk
            params["rel_reference"] = torch.zeros(head.rel_reference.shape)
            self.relevance_reference = "zero"
        if "map_reference" not in params:  # saved before map_reference: the paper's maps
            params["map_reference"] = torch.zeros(head.map_reference.shape)
            self.map_reference = "zero"
        head.load_state_dict(params, assign=True)
        self.head_ = head.to(self._model_device())
        self.tail_ = find_tail(self.model, self.dense_layer_)
        self.pruned_ = dict(state["pruned"])
        self.class_names_ = list(state["class_names"])
        self.history_ = list(state["history"])
        self.concept_names_ = concept_names(
            [self.class_names_[c] for c in self.classes_], self.n_concepts
        )

    def _onnx_module(self) -> nn.Module:
        return _ExplainModule(self.model, self.layer_, self.head_, self.classes_).eval()
