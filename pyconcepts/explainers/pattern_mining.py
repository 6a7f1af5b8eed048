"""Filter-pattern mining (Meynen, Behzadi-Khormouji & Oramas): class-specific and class-shared
groups of convolutional filters, mined from the patches that Grad-CAM highlights.

Pipeline (``fit``):

1. Grad-CAM of the predicted class at ``layer``, upsampled to the image.
2. Candidate patches (seed eq. 1): ``n_candidates`` random ω×ω windows scored by the heatmap sum;
   the best is kept and its region zeroed in the heatmap; repeated ``n_patches`` times.
3. Relevant patches: the image is perturbed by zeroing each candidate (all candidates of a batch
   in one forward pass); patches are kept in order until the change of the class probability
   between sequential perturbations falls below ``tau_prt``.
4. Transactions (seed eq. 2): the layer's activation maps upsampled to the image, summed over the
   patch; the ``top_filters`` (N−1) strongest filters + the predicted class item.
5. Hierarchical mining: eclat per predicted class (class-specific itemsets, support fraction
   ``tau_support`` of that class's transactions); their filter-only parts are re-counted on the
   whole database without class items (class-shared supports).
6. Rules filters → class with support, confidence and lift on the whole database; the
   ``top_rules`` (q) best per class by support × confidence. Filter groups frequent in several
   classes are the class-shared patterns.
7. Visual patterns: per rule, the average of its patches weighted by the rule filters' response.

``evaluate`` runs the seed's ablation (zero a class's rule filters, measure that class's
accuracy, vs as many random filters and vs the unperturbed model); ``ground_truth_scores`` checks
on the concept world whether the mined filters detect the concepts that define the classes.

Items: filter ``f`` is item ``f``; class ``c`` is item ``n_filters + c``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pyconcepts.attribution import grad_cam
from pyconcepts.data.batches import iter_batches
from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.base import ConceptExplainer, class_names_of
from pyconcepts.explainers.layout import class_table, resize_matrix, resolve_targets, upsample
from pyconcepts.explainers.streams import item_streams
from pyconcepts.explanation import Explanation, combine_maps, scores_of_columns
from pyconcepts.models.features import FeatureExtractor, resolve_layer
from pyconcepts.models.layers import discover_layers
from pyconcepts.ops import association_rules, frequent_itemsets, itemset_support

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pyconcepts.data.concept_world import ConceptWorld


@dataclass(frozen=True)
class PatternRule:
    """A mined rule ``filters -> class`` (support, confidence, lift on all transactions)."""

    filters: tuple[int, ...]
    class_id: int
    count: int
    support: float
    confidence: float
    lift: float


@dataclass(frozen=True)
class SharedPattern:
    """A filter group frequent in the transactions of several classes."""

    filters: tuple[int, ...]
    classes: tuple[int, ...]
    count: int  # transactions of any class holding all the filters
    support: float


def _window_sums(integral: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over ``size``×``size`` windows: integral ``[B,C,H+1,W+1]``, corners ``[B,M,2]``
    (top, left) → ``[B,M,C]``."""
    b, c, h1, w1 = integral.shape
    flat = integral.reshape(b, c, h1 * w1)
    y, x = corners[..., 0], corners[..., 1]

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        idx = (yy * w1 + xx)[:, None, :].expand(b, c, -1)
        return flat.gather(2, idx)

    total = at(y + size, x + size) - at(y, x + size) - at(y + size, x) + at(y, x)
    return total.transpose(1, 2)


def _integral(maps: torch.Tensor) -> torch.Tensor:
    """Zero-padded 2-D cumulative sums of ``[B,C,H,W]`` → ``[B,C,H+1,W+1]``."""
    return F.pad(maps.cumsum(2).cumsum(3), (1, 0, 1, 0))


def _bilinear_prefix(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    """``[n_out + 1, n_in]``: row r sums the first r rows of the 1-D bilinear resize matrix
    ``n_in → n_out`` (``align_corners=False``, as ``F.interpolate``)."""
    return F.pad(resize_matrix(n_in, n_out, like).cumsum(0), (0, 0, 1, 0))


def window_responses(
    maps: torch.Tensor, corners: torch.Tensor, size: int, image_size: Sequence[int]
) -> torch.Tensor:
    """Sums of the maps ``[B,C,h,w]``, bilinearly upsampled to ``image_size``, over the
    ``size``×``size`` windows at ``corners [B,M,2]`` → ``[B,M,C]`` — computed at the maps' own
    resolution: upsampling is linear and separable, so a window's sum is the maps weighted by
    the window's column sums of the two 1-D resize matrices (no ``[B,C,H,W]`` temporary)."""
    height, width = int(image_size[0]), int(image_size[1])
    rows = _bilinear_prefix(height, maps.shape[2], maps)  # [H + 1, h]
    cols = _bilinear_prefix(width, maps.shape[3], maps)  # [W + 1, w]
    y, x = corners[..., 0], corners[..., 1]
    wy = rows[y + size] - rows[y]  # [B, M, h]
    wx = cols[x + size] - cols[x]  # [B, M, w]
    return torch.einsum("bmh,bmw,bchw->bmc", wy, wx, maps)


def _box_masks(corners: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Bool ``[B,M,H,W]``: True inside each window of ``corners`` ``[B,M,2]``."""
    rows = torch.arange(height, device=corners.device)
    cols = torch.arange(width, device=corners.device)
    y, x = corners[..., 0:1], corners[..., 1:2]
    in_y = (rows >= y) & (rows < y + size)
    in_x = (cols >= x) & (cols < x + size)
    return in_y[..., :, None] & in_x[..., None, :]


@contextlib.contextmanager
def ablated(model: nn.Module, layer: str, keep: torch.Tensor) -> Iterator[None]:
    """Within the block, the activation maps of ``layer``'s channels where ``keep`` is False
    are zeroed (the seed's filter perturbation)."""
    _, module = resolve_layer(model, layer)

    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return out * keep.to(out.dtype).view(1, -1, *([1] * (out.dim() - 2)))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _PatternScorer(nn.Module):
    """images (, targets) → the pattern outputs (``FilterPatterns.onnx_outputs`` order) for the
    explained class of each image (default: the prediction): each of its rules' score (the mean
    of its filters' peaks, relative to their fit-time mean peak) and map (the mean of its
    filters' maps in the same units, each measured from its ``offset``), computed at the
    layer's resolution and upsampled only for that class's rules. ``explain`` and the ONNX
    export both run it."""

    table: torch.Tensor

    def __init__(
        self, model: nn.Module, layer: str, rules: torch.Tensor, scale: torch.Tensor,
        offset: torch.Tensor, table: torch.Tensor,
    ) -> None:  # fmt: skip
        super().__init__()
        self.extractor = FeatureExtractor(model, [layer])
        self.model = model
        self.rules = nn.Parameter(rules, requires_grad=False)
        self.scale = nn.Parameter(scale, requires_grad=False)
        self.offset = nn.Parameter(offset, requires_grad=False)  # [F], in units of scale
        self.register_buffer("table", table)

    def forward(
        self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, ...]:
        feats, logits = self.extractor(images, return_output=True)
        acts = feats[self.extractor.names[0]] / self.scale[None, :, None, None]
        if targets is None:
            targets = logits.argmax(1)
        columns = self.table[targets]  # [B, Q]: the target class's rules (−1: none)
        n_rules = self.rules.shape[0]
        own = (columns[:, :, None] == torch.arange(n_rules, device=columns.device)).any(1)
        scores = (acts.amax(dim=(2, 3)) @ self.rules.t()) * own.to(acts.dtype)
        # the target's rules only (a −1 column: a zero rule, so a zero map)
        rules = self.rules[columns.clamp_min(0)] * (columns >= 0).to(acts.dtype)[..., None]
        maps = torch.einsum("bqk,bkhw->bqhw", rules, torch.relu(acts - self.offset[:, None, None]))
        heatmaps = upsample(maps, images.shape[-2:]).clamp_min(0)
        class_maps = combine_maps(heatmaps, scores_of_columns(scores, columns))
        return logits, scores, heatmaps, columns, class_maps


class FilterPatterns(ConceptExplainer):
    """Class-specific and class-shared filter patterns by mining Grad-CAM patches.

    Args:
        model: any torch CNN classifier (images → logits).
        layer: the conv layer to explain (dotted name); None takes the zoo model's feature
            layer (the seed uses the last conv layer).
        top_filters: N−1, filters per patch transaction (seed: 5, 10, 25; default 10).
        patch_size: ω in pixels (seed: unspecified; default 16 = a quarter of a 64 px image).
        n_candidates: m random windows per candidate draw (seed: unspecified; default 64).
        n_patches: k candidate patches per image (seed: unspecified; default 5).
        tau_prt: stop growing the relevant patches when the class probability changes by less
            than this between sequential perturbations (seed: 0.1).
        tau_support: minimum support of class-specific itemsets, a fraction of the class's
            transactions (seed: 0.5).
        top_rules: q, rules kept per class by support × confidence (seed: 10).
        min_confidence: minimum rule confidence (seed: none, default 0).
        max_itemset_len: longest filter itemset mined (seed: no limit, the default).
        max_itemsets: per class, stop with a ValueError when more itemsets than this are
            frequent (seed: no limit; default 1,000,000). Long transactions of similar filters
            (large ``top_filters``) make their number grow like 2^top_filters; the cap turns
            running out of memory into an error that suggests ``max_itemset_len``.
        batch_size: images per Grad-CAM / perturbation batch (16; 32 until 2026-12-07: on
            EfficientNet-Lite0 at 224 px the fit on 40 photos peaked at 2,679 MiB, 1,383 MiB
            at 16, with the same patterns). The mined patterns do not depend on it: each
            image draws its candidate windows from its own random stream.
        seed: seeds the random candidate windows.
        class_names: names of the model's classes (default: the zoo's, else ``class_i``).
        max_images: use at most this many fit images (None: all of them).
        map_reference: what each filter's map is measured from in the rule heatmaps (the seed
            defines no heatmap for new images; ``explain`` is ours). ``"mean"`` (default): its
            mean activation over the fit images, ``relu(A_f − Ā_f)``, so the level a filter
            keeps on every image is not summed into the class map; ``"zero"``: ``A_f``.
            Measured on the concept world (docs/methods.md, 3 seeds, cw-vgg / cw-resnet):
            energy on the class-defining parts 0.35 → 0.38 / 0.38 → 0.41, ROC-AUC
            0.79 → 0.80 / 0.895 → 0.899, pointing unchanged. Rule scores do not depend on it.
    """

    method = "pattern_mining"
    onnx_outputs = ("logits", "concept_scores", "heatmaps", "heatmap_concepts", "class_maps")

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[str] = None,
        top_filters: int = 10,
        patch_size: int = 16,
        n_candidates: int = 64,
        n_patches: int = 5,
        tau_prt: float = 0.1,
        tau_support: float = 0.5,
        top_rules: int = 10,
        min_confidence: float = 0.0,
        max_itemset_len: Optional[int] = None,
        max_itemsets: Optional[int] = 1_000_000,
        batch_size: int = 16,
        seed: int = 0,
        class_names: Optional[Sequence[str]] = None,
        max_images: Optional[int] = None,
        map_reference: str = "mean",
    ) -> None:
        self.model = model
        self.layer = layer
        self.top_filters = top_filters
        self.patch_size = patch_size
        self.n_candidates = n_candidates
        self.n_patches = n_patches
        self.tau_prt = tau_prt
        self.tau_support = tau_support
        self.top_rules = top_rules
        self.min_confidence = min_confidence
        self.max_itemset_len = max_itemset_len
        self.max_itemsets = max_itemsets
        self.batch_size = batch_size
        self.seed = seed
        self.class_names = class_names
        self.max_images = max_images
        self.map_reference = map_reference

    # ---- configuration checks -------------------------------------------------------------
    def _layer_name(self, example: torch.Tensor) -> str:
        """``layer``, or the model's last spatial feature map (``discover_layers``)."""
        layer = self.layer or discover_layers(self.model, example).feature_map
        return resolve_layer(self.model, layer)[0]

    def _check_config(self, height: int, width: int) -> None:
        names = (
            "top_filters",
            "patch_size",
            "n_candidates",
            "n_patches",
            "top_rules",
            "batch_size",
        )
        check_positive_ints(**{n: getattr(self, n) for n in names})
        for name in ("max_itemset_len", "max_itemsets"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name}: expected None or an int >= 1, got {value!r}")
        if self.patch_size > min(height, width):
            raise ValueError(
                f"patch_size: expected at most the image side {min(height, width)}, "
                f"got {self.patch_size}"
            )
        for name in ("tau_prt", "min_confidence"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a float in [0, 1], got {value!r}")
        if self.map_reference not in ("mean", "zero"):
            raise ValueError(
                f"map_reference: expected 'mean' or 'zero', got {self.map_reference!r}"
            )
        if not isinstance(self.tau_support, float) or not 0.0 < self.tau_support <= 1.0:
            raise ValueError(
                f"tau_support: expected a float fraction in (0, 1], got {self.tau_support!r}"
            )

    # ---- patch extraction ---------------------------------------------------------------
    def _candidate_patches(self, cam: torch.Tensor, first: int) -> torch.Tensor:
        """Seed eq. 1: ``[B,k,2]`` window corners, best-first; each draw is fresh and the chosen
        window's heatmap region is zeroed before the next. Image ``first + i`` of the fit data
        draws from its own random stream, so the windows do not depend on ``batch_size`` (with
        one stream per fit, a batch of 32 drew other windows than batches of 8)."""
        b, h, w = cam.shape
        size = self.patch_size
        gens = item_streams(self.seed, range(first, first + b))
        heat = cam.clone()
        corners = []
        for _ in range(self.n_patches):
            draws = torch.stack(
                [
                    torch.stack(
                        [
                            torch.randint(0, h - size + 1, (self.n_candidates,), generator=g),
                            torch.randint(0, w - size + 1, (self.n_candidates,), generator=g),
                        ],
                        dim=-1,
                    )
                    for g in gens
                ]
            ).to(cam.device)
            scores = _window_sums(_integral(heat[:, None]), draws, size)[..., 0]
            best = draws[torch.arange(b), scores.argmax(1)]
            corners.append(best)
            heat = heat.masked_fill(_box_masks(best[:, None], size, h, w)[:, 0], 0.0)
        return torch.stack(corners, dim=1)

    def _class_probability(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for xb, tb in zip(images.split(self.batch_size), targets.split(self.batch_size)):
                out.append(self.model(xb).softmax(1).gather(1, tb[:, None])[:, 0])
        return torch.cat(out)

    def _relevant(
        self, images: torch.Tensor, corners: torch.Tensor, targets: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        """Bool ``[B,k]``: the relevant patches P* (a prefix of the candidates, at least one)."""
        b, k = corners.shape[:2]
        masks = _box_masks(corners, self.patch_size, *images.shape[-2:])
        perturbed = (images[:, None] * ~masks[:, :, None]).flatten(0, 1)
        probs = self._class_probability(perturbed, targets.repeat_interleave(k)).view(b, k)
        sequence = torch.cat([base[:, None], probs], dim=1)
        small = (sequence[:, 1:] - sequence[:, :-1]).abs() < self.tau_prt
        last = torch.where(small.any(1), small.float().argmax(1), torch.full_like(targets, k - 1))
        return torch.arange(k, device=images.device)[None] <= last[:, None]

    def _transactions(self, images: torch.Tensor, first: int) -> dict[str, torch.Tensor]:
        """Relevant patches of a batch (images ``first``… of the fit data) with their filter
        responses and top filters."""
        cam = grad_cam(self.model, self.layer_, images)
        corners = self._candidate_patches(cam.cam, first)
        base = cam.logits.softmax(1).gather(1, cam.targets[:, None])[:, 0]
        keep = self._relevant(images, corners, cam.targets, base)
        responses = window_responses(cam.activations, corners, self.patch_size, images.shape[-2:])
        image_of = torch.arange(len(images), device=images.device)[:, None].expand_as(keep)
        crops = torch.stack(
            [
                images[i, :, y : y + self.patch_size, x : x + self.patch_size]
                for i, (y, x) in zip(image_of[keep].tolist(), corners[keep].tolist())
            ]
        )
        return {
            "responses": responses[keep],
            "classes": cam.targets[:, None].expand_as(keep)[keep],
            "patches": crops,
            "filter_max": cam.activations.amax(dim=(2, 3)),
            "filter_mean": cam.activations.mean(dim=(2, 3)),
        }

    # ---- fit ------------------------------------------------------------------------------
    def fit(self, data: Any, progress: bool = False) -> FilterPatterns:
        """Mine the patterns of ``data`` (tensor, (images, labels), Dataset or batches); a
        progress bar over the batches with ``progress``."""
        parts: dict[str, list[torch.Tensor]] = {}
        device = self._model_device()
        batches = iter_batches(data, self.batch_size, device, self.max_images)
        seen = 0
        for images, _ in tqdm(batches, desc="FilterPatterns", unit="batch", disable=not progress):
            images = self._check_images(images, "data")
            if not parts:
                self._check_config(*images.shape[-2:])
                self._record_fit(images)
                self.layer_ = self._layer_name(images)
            for key, value in self._transactions(images, seen).items():
                parts.setdefault(key, []).append(value.detach().cpu())
            seen += len(images)
        if not parts:
            raise ValueError("data: expected at least one image, got none")
        responses = torch.cat(parts["responses"])
        classes = torch.cat(parts["classes"])
        n_filters = responses.shape[1]
        n_classes = self._n_classes()
        top = min(self.top_filters, n_filters)
        filters = responses.topk(top, dim=1).indices
        self.class_names_ = class_names_of(self.model, n_classes, self.class_names)
        self.n_filters_ = n_filters
        self.n_transactions_ = len(classes)
        self.rules_, self.shared_ = self._mine(filters, classes, n_filters)
        self.filter_scale_ = torch.cat(parts["filter_max"]).mean(0).clamp_min(1e-6)
        self.filter_mean_ = torch.cat(parts["filter_mean"]).mean(0)
        self.pattern_images_ = self._visual_patterns(
            filters, classes, responses, torch.cat(parts["patches"])
        )
        self._set_rule_tensors()
        return self

    def _n_classes(self) -> int:
        with torch.no_grad():
            probe = torch.zeros(1, self.n_features_in_, *self.input_size_)
            return int(self.model(probe.to(self._model_device())).shape[1])

    def _mine(
        self, filters: torch.Tensor, classes: torch.Tensor, n_filters: int
    ) -> tuple[list[PatternRule], list[SharedPattern]]:
        """Hierarchical eclat (per class, then supports on all) → top rules, shared groups."""
        indptr = np.arange(0, filters.numel() + 1, filters.shape[1], dtype=np.int64)
        flat = filters.numpy().astype(np.int64).ravel()
        counts: dict[tuple[int, ...], int] = {}
        frequent_in: dict[tuple[int, ...], list[int]] = {}
        n = len(classes)
        for c in sorted(set(classes.tolist())):
            rows = filters[classes == c].numpy()
            item = n_filters + c
            try:
                frequent = frequent_itemsets(
                    rows.tolist(),
                    self.tau_support,
                    self.max_itemset_len,
                    max_itemsets=self.max_itemsets,
                )
            except ValueError as exc:
                if "max_itemsets" not in str(exc):
                    raise
                raise ValueError(
                    f"max_itemsets: class {self.class_names_[c]!r} has more than "
                    f"{self.max_itemsets} frequent filter itemsets at tau_support="
                    f"{self.tau_support}; set max_itemset_len (e.g. 4), raise tau_support or "
                    "lower top_filters"
                ) from exc
            for items, count in frequent:
                counts[(*items, item)] = count
                frequent_in.setdefault(items, []).append(c)
            counts[(item,)] = len(rows)
        shared_sets = list(frequent_in)
        on_all = itemset_support((indptr, flat), shared_sets)
        counts.update(zip(shared_sets, on_all.tolist()))
        class_items = [n_filters + c for c in range(len(self.class_names_))]
        rules = association_rules(
            list(counts.items()), self.min_confidence, n, consequents=class_items
        )
        kept: list[PatternRule] = []
        per_class: dict[int, int] = {}
        for r in rules:
            c = r.consequent[0] - n_filters
            if per_class.get(c, 0) < self.top_rules:
                per_class[c] = per_class.get(c, 0) + 1
                kept.append(PatternRule(r.antecedent, c, r.count, r.support, r.confidence, r.lift))
        kept.sort(key=lambda r: (r.class_id, -r.support * r.confidence, r.filters))
        shared = [
            SharedPattern(items, tuple(cs), counts[items], counts[items] / n)
            for items, cs in frequent_in.items()
            if len(cs) >= 2
        ]
        shared.sort(key=lambda s: (-len(s.classes), -s.count, s.filters))
        return kept, shared

    def _visual_patterns(
        self,
        filters: torch.Tensor,
        classes: torch.Tensor,
        responses: torch.Tensor,
        patches: torch.Tensor,
    ) -> torch.Tensor:
        """Per rule, its patches averaged with weights = the rule filters' response (Fig. 4)."""
        size = self.patch_size
        out = torch.zeros(len(self.rules_), patches.shape[1], size, size)
        for j, rule in enumerate(self.rules_):
            rule_filters = torch.tensor(rule.filters)
            holds = (filters[..., None] == rule_filters).any(1).all(1) & (classes == rule.class_id)
            weights = responses[holds][:, rule_filters].sum(1).clamp_min(0)
            if float(weights.sum()) > 0:
                out[j] = torch.einsum("n,nchw->chw", weights, patches[holds]) / weights.sum()
        return out

    def _set_rule_tensors(self) -> None:
        matrix = torch.zeros(len(self.rules_), self.n_filters_)
        for j, rule in enumerate(self.rules_):
            matrix[j, list(rule.filters)] = 1.0 / len(rule.filters)
        self.rule_matrix_ = matrix
        self.concept_names_ = [
            "+".join(f"f{f}" for f in r.filters) + f" -> {self.class_names_[r.class_id]}"
            for r in self.rules_
        ]

    # ---- use ------------------------------------------------------------------------------
    def explain(self, images: torch.Tensor, targets: Optional[Any] = None) -> Explanation:
        """Per image, the rules of its explained class (default: the prediction):
        ``concept_scores`` (that class's rule columns, 0 elsewhere: each rule's mean over its
        filters of the peak activation, relative to the fit-time mean peak), their maps
        (``heatmaps [B, q, H, W]``, the mean map of the rule's filters measured from
        ``map_reference``; −1 columns where the
        class has fewer rules) and their score-weighted sum (``class_maps``)."""
        self._check_fitted()
        images = self._check_images(images).to(self._model_device())
        t = resolve_targets(targets, images.shape[0], len(self.class_names_))
        out, t = self._explain_outputs(images, t)
        return Explanation.from_outputs(
            self.method, self.layer_, self.concept_names_, self.class_names_,
            {k: v.cpu() for k, v in out.items()}, t.cpu(),
        )  # fmt: skip

    def class_filters(self, class_id: int) -> list[int]:
        """The filters of all rules of ``class_id`` (what the ablation zeroes)."""
        self._check_fitted()
        return sorted({f for r in self.rules_ if r.class_id == class_id for f in r.filters})

    def evaluate(self, data: Any, n_random: int = 5, seed: int = 0) -> dict[str, Any]:
        """The seed's ablation (Table 1): per class, accuracy on its images when its rule
        filters' activation maps are zeroed, vs as many random filters (mean of ``n_random``
        draws) and vs the unperturbed model; returns means over classes."""
        self._check_fitted()
        gen = torch.Generator().manual_seed(seed)
        images, labels = [], []
        for xb, yb in iter_batches(data, self.batch_size):
            if yb is None:
                raise ValueError("data: evaluate needs labels: pass (images, labels) or a Dataset")
            images.append(xb)
            labels.append(yb)
        x, y = torch.cat(images), torch.cat(labels)
        rows = []
        for c in sorted(set(y.tolist())):
            xc = x[y == c]
            chosen = self.class_filters(c)
            keep = torch.ones(self.n_filters_, dtype=torch.bool)
            keep[chosen] = False
            random_acc = []
            for _ in range(n_random):
                pick = torch.ones(self.n_filters_, dtype=torch.bool)
                pick[torch.randperm(self.n_filters_, generator=gen)[: len(chosen)]] = False
                random_acc.append(self._accuracy(xc, c, pick))
            rows.append(
                {
                    "class": self.class_names_[c],
                    "n_filters": len(chosen),
                    "baseline": self._accuracy(xc, c, None),
                    "ours": self._accuracy(xc, c, keep),
                    "random": float(np.mean(random_acc)),
                }
            )
        return {
            "baseline": float(np.mean([r["baseline"] for r in rows])),
            "ours": float(np.mean([r["ours"] for r in rows])),
            "random": float(np.mean([r["random"] for r in rows])),
            "avg_perturbed": float(np.mean([r["n_filters"] for r in rows])),
            "per_class": rows,
        }

    def _accuracy(self, images: torch.Tensor, class_id: int, keep: Optional[torch.Tensor]) -> float:
        context = (
            contextlib.nullcontext() if keep is None else ablated(self.model, self.layer_, keep)
        )
        correct = 0
        with torch.no_grad(), context:
            for xb in images.split(self.batch_size):
                correct += int(
                    (self.model(xb.to(self._model_device())).argmax(1) == class_id).sum()
                )
        return correct / max(1, len(images))

    def plot(self, max_rules: int = 20) -> Figure:
        """Grid of the rules' visual patterns (weighted average patches), titled by rule."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        self._check_fitted()
        n = max(1, min(max_rules, len(self.rules_)))
        cols = min(5, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
        for j, ax in enumerate(axes.ravel()):
            ax.axis("off")
            if j < min(n, len(self.rules_)):
                image = self.pattern_images_[j].permute(1, 2, 0).clamp(0, 1).numpy()
                ax.imshow(image if image.shape[2] == 3 else image[..., 0], interpolation="nearest")
                rule = self.rules_[j]
                ax.set_title(
                    f"{'+'.join(map(str, rule.filters))}\n→ {self.class_names_[rule.class_id]}"
                    f" ({rule.confidence:.2f})",
                    fontsize=7,
                )
        fig.tight_layout()
        return fig

    # ---- persistence / export -------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {
            "filter_scale": self.filter_scale_,
            "filter_mean": self.filter_mean_,
            "pattern_images": self.pattern_images_,
        }
        state = {
            "layer": self.layer_,
            "class_names": list(self.class_names_),
            "n_filters": self.n_filters_,
            "n_transactions": self.n_transactions_,
            "rules": [asdict(r) for r in self.rules_],
            "shared": [asdict(s) for s in self.shared_],
        }
        return tensors, state

    def _set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.layer_ = str(state["layer"])
        self.class_names_ = list(state["class_names"])
        self.n_filters_ = int(state["n_filters"])
        self.n_transactions_ = int(state["n_transactions"])
        self.rules_ = [PatternRule(**{**r, "filters": tuple(r["filters"])}) for r in state["rules"]]
        self.shared_ = [
            SharedPattern(**{**s, "filters": tuple(s["filters"]), "classes": tuple(s["classes"])})
            for s in state["shared"]
        ]
        self.filter_scale_ = tensors["filter_scale"]
        if "filter_mean" not in tensors:  # saved before map_reference: maps measured from 0
            self.map_reference = "zero"
        self.filter_mean_ = tensors.get("filter_mean", torch.zeros_like(self.filter_scale_))
        self.pattern_images_ = tensors["pattern_images"]
        self._set_rule_tensors()

    def _onnx_module(self) -> nn.Module:
        """The pattern scorer: model + per-rule scores and heatmaps from the layer's maps. It,
        not the transaction encoder, is exported: serving wants per-image pattern evidence,
        while transactions only matter when mining."""
        groups: list[list[int]] = [[] for _ in self.class_names_]
        for j, rule in enumerate(self.rules_):
            groups[rule.class_id].append(j)
        offset = self.filter_mean_ / self.filter_scale_
        if self.map_reference == "zero":
            offset = torch.zeros_like(offset)
        return _PatternScorer(
            self.model, self.layer_, self.rule_matrix_, self.filter_scale_, offset,
            class_table(groups, self.top_rules),
        ).to(self._model_device())  # fmt: skip


def ground_truth_scores(
    explainer: FilterPatterns, world: ConceptWorld, n_images: int = 256, n_random: int = 200
) -> dict[str, float]:
    """Do the mined filters detect the concepts that define their classes?

    Each filter is assigned the concept whose masks it fires on most (mean activation inside
    the concept's pixels over the mean everywhere, on ``n_images`` images). A rule is *grounded*
    when one of its filters' concepts defines its class; a class-shared group is grounded when
    one of its filters' concepts defines at least two of the classes sharing it. Returns the
    grounded fractions and their chance levels (random filter groups of the same sizes).
    """
    explainer._check_fitted()
    n = min(n_images, len(world))
    extractor = FeatureExtractor(explainer.model, [explainer.layer_])
    k = len(world.concepts)
    inside = torch.zeros(explainer.n_filters_, k)
    pixels = torch.zeros(k)
    total = torch.zeros(explainer.n_filters_)
    count = 0
    with torch.no_grad():
        for start in range(0, n, explainer.batch_size):
            index = slice(start, min(n, start + explainer.batch_size))
            images = world.image(index)
            acts = extractor(images.to(explainer._model_device()))[extractor.names[0]].cpu()
            acts = F.interpolate(acts, size=images.shape[-2:], mode="bilinear", align_corners=False)
            masks = world.concept_masks(index).float()
            inside += torch.einsum("bfhw,bkhw->fk", acts, masks)
            pixels += masks.sum((0, 2, 3))
            total += acts.sum((0, 2, 3))
            count += acts.shape[0] * acts.shape[2] * acts.shape[3]
    ratio = (inside / pixels.clamp_min(1)) / (total / count).clamp_min(1e-12)[:, None]
    concept_of = ratio.argmax(1)
    defines = world.class_concept_matrix()

    def rule_ok(filters: Sequence[int], class_id: int) -> bool:
        return bool(defines[class_id, concept_of[list(filters)]].any())

    def shared_ok(filters: Sequence[int], classes: Sequence[int]) -> bool:
        return bool((defines[list(classes)][:, concept_of[list(filters)]].sum(0) >= 2).any())

    gen = torch.Generator().manual_seed(0)

    def chance(groups: Sequence[tuple[int, Any]], check: Any) -> float:
        hits = [
            check(torch.randperm(explainer.n_filters_, generator=gen)[:size].tolist(), owner)
            for _ in range(n_random)
            for size, owner in groups
        ]
        return float(np.mean(hits)) if hits else float("nan")

    rules = explainer.rules_
    shared = explainer.shared_
    return {
        "rules_grounded": float(np.mean([rule_ok(r.filters, r.class_id) for r in rules]))
        if rules
        else float("nan"),
        "rules_chance": chance([(len(r.filters), r.class_id) for r in rules], rule_ok),
        "shared_grounded": float(np.mean([shared_ok(s.filters, s.classes) for s in shared]))
        if shared
        else float("nan"),
        "shared_chance": chance([(len(s.filters), s.classes) for s in shared], shared_ok),
    }
