"""Interpretable Basis Decomposition (Zhou, Sun, Bau & Torralba, ECCV 2018).

1. **Concept vectors.** For each concept c a logistic classifier ``sigmoid(w_cᵀa + b_c)`` is
   trained on the layer's per-position features a, with the concept's segmentation mask
   (downsampled to the layer's h×w by nearest neighbour) as labels: positives and negatives
   resampled to 1:``neg_ratio`` (1:20), ``mining_rounds`` (5) rounds of hard-negative mining,
   all concepts trained together in one batched torch loop. ``q_c = (w_c − mean w_c) / ‖·‖``.
2. **Decomposition.** Each class weight vector ``w_k`` is decomposed greedily into
   ``n_terms`` (7) non-negative concept terms plus a residual, ``w_k = Σ s_i q_ci + r`` (eq. 6),
   with :func:`pyconcepts.ops.greedy_nnls_basis`. ``basis_metric`` says which error the greedy
   fit minimises:

   * ``"weights"`` (the paper): the Euclidean norm ``‖w_k − Σ s_i q_ci‖``;
   * ``"logit"``: the residual's effect on the class logit over the fit images,
     ``E[(rᵀ(a − ā))²] = ‖Lᵀr‖²`` with ``L Lᵀ`` the covariance of the pooled features a (ā:
     their mean). Why: a weight component along a direction the features never vary in
     changes no logit, yet the paper's norm charges it in full. Contributions are then
     measured from ā (from 0 in the paper): ``s_i q_ciᵀ(a − ā)`` says how much concept i raises
     the logit above an average image; ``rᵀā`` and ``Σ s_i q_ciᵀā`` move into the bias term,
     so the terms still sum exactly to the logit.
   * ``"auto"`` (default): ``"logit"`` in CAM mode, where the logit is exactly ``w_kᵀa + b_k``
     and the metric is exact; ``"weights"`` in Grad-CAM mode, where ``w_k(a)`` changes with the
     image and the metric is only a linearisation. Measured on the concept world (docs/methods.md):
     on cw-resnet (CAM, layer3, D = 128) the paper's fit leaves 99 % of the weight norm
     unexplained and ranks the concepts the model uses at precision@k 0.56; the logit metric
     ranks them at 0.73 and its maps point at them as often as Grad-CAM (0.82). On cw-vgg
     (Grad-CAM mode) the logit metric moved the maps off the objects (pointing 0.62 → 0.36).
3. **Explanation.** For image features A (pooled a = mean A): contributions ``s_i q_ciᵀ(a−ā)``
   and ``rᵀ(a−ā) + b_k + w_kᵀā`` sum exactly to the logit (eq. 9); heatmaps ``s_i q_ciᵀ(A−ā)``
   (upsampled) sum with the residual heatmap to the CAM less ``w_kᵀā`` (eq. 11). The concepts
   are ranked by their heatmaps' peaks (``concept_score="peak"``) or, as in the paper, by
   their contributions (``"contribution"``); see the constructor.
4. **Grad-CAM decomposition** (``mode="gradcam"``, or ``"auto"`` when the classifier is not
   linear in the pooled layer): ``w_k(a)`` = spatially pooled gradient. The paper decomposes
   it per image (eq. 12: ``explain(..., per_image=True)``, the whole batch in one kernel call).
   By default each class is decomposed once instead, from its mean pooled gradient ``w̄_k``
   over (at most 256) fit images, and explained like CAM mode with ``score = w̄_kᵀa``: fixed
   bases that also export to ONNX. Why: measured on the concept world's cw-vgg
   (features.relu4, docs/methods.md), the per-image bases point at the defining concepts on
   62 % of images (energy 0.35) and rank the used ones at precision@k 0.48; the class bases
   reach 0.80 (energy 0.43) and 0.66, above Grad-CAM's 0.78 and 0.28.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, cast

import torch
from torch import nn
from torch.nn import functional as F

from pyconcepts.attribution.gradcam import grad_cam, mean_class_weights
from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.base import ConceptExplainer, class_names_of
from pyconcepts.explainers.layout import resolve_targets, upsample
from pyconcepts.explanation import Explanation
from pyconcepts.metrics.ibd import average_precision, basis_ground_truth, residual_ratio
from pyconcepts.models.features import FeatureExtractor, resolve_layer
from pyconcepts.models.layers import discover_layers
from pyconcepts.ops import greedy_nnls_basis
from pyconcepts.opspec.nnls import BasisFit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["IBD", "ConceptTraining", "train_concept_classifiers"]

_MODES = ("auto", "cam", "gradcam")
_METRICS = ("auto", "logit", "weights")
_SCORES = ("peak", "contribution")


class IBD(ConceptExplainer):
    """Interpretable Basis Decomposition of a CNN's class scores into concept terms.

    Args:
        model: the classifier (``eval()`` is the caller's business; fitting does not train it).
        layer: the conv layer whose features are decomposed; default: the model's last spatial
            feature map (``discover_layers``: ``"layer3"`` for ``cw-resnet``).
        classifier: the linear layer applied to the globally pooled ``layer`` (None: the last
            ``nn.Linear`` of the model). Needed for CAM mode.
        mode: ``"cam"`` (class weights of the linear head), ``"gradcam"`` (pooled gradients,
            eq. 12) or ``"auto"`` (CAM when ``logits == classifier(mean A)``).
        n_terms: terms of each basis (7, the IBD code's value).
        basis_metric: ``"auto"`` (default), ``"logit"`` or ``"weights"`` (the paper's): the error
            the basis minimises and the reference the contributions are measured from (module
            docstring); the one used is ``basis_metric_`` after fitting.
        concept_score: what ``explain``'s ``concept_scores`` rank the basis concepts by:
            ``"peak"`` (default), the maximum over positions of the term's map
            ``s_i q_iᵀ(A_hw − ā)``, or ``"contribution"`` (the paper's), the term's share of the
            score ``s_i q_iᵀ(a − ā)`` with a the pooled feature (always in the extras'
            ``contributions``, which sum to the score). Why: the pooled contribution grows with
            the concept's area, so a small part that decides the class ranks below a large one
            the model ignores. Measured on the concept world (docs/methods.md, 3 seeds): the
            concepts the model uses ranked at precision@k 0.65 → 0.75 (cw-vgg) and
            0.73 → 0.78 (cw-resnet), Spearman 0.35 → 0.64 and 0.57 → 0.74.
        neg_ratio: negatives per positive when training a concept classifier (20).
        mining_rounds: rounds of hard-negative mining (5).
        hard_fraction: share of each round's negatives taken as the highest-scoring ones, the
            rest random (the paper gives no split; 0.5).
        steps: Adam steps per round (full batch over the selected positions).
        lr: Adam learning rate.
        weight_decay: L2 penalty on the concept classifiers' weights.
        heldout: fraction of the images kept out of training to measure concept AP.
        batch_size: images per forward pass (32; 128 until 2026-12-07: on EfficientNet-Lite0
            with 160 concept images at 224 px the fit peaked at 2,340 MiB and took 10.5 s,
            985 MiB and 8.0 s with 32, the same basis).
        seed: seeds the split and the sampling of negatives.
        class_names: names of the classes (default: the zoo's, else ``class_i``).
        max_images: use at most this many fit images (None: all of them).
    """

    method = "ibd"
    onnx_outputs = (
        "logits", "concept_scores", "heatmaps", "heatmap_concepts", "class_maps", "basis_indices",
        "basis_coefs", "contributions", "residual_contribution", "bias", "score",
        "residual_heatmap", "cam",
    )  # fmt: skip

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[str] = None,
        classifier: Optional[str] = None,
        mode: str = "auto",
        n_terms: int = 7,
        basis_metric: str = "auto",
        concept_score: str = "peak",
        neg_ratio: int = 20,
        mining_rounds: int = 5,
        hard_fraction: float = 0.5,
        steps: int = 60,
        lr: float = 0.05,
        weight_decay: float = 1e-4,
        heldout: float = 0.2,
        batch_size: int = 32,
        seed: int = 0,
        class_names: Optional[list[str]] = None,
        max_images: Optional[int] = None,
    ) -> None:
        self.model = model
        self.layer = layer
        self.classifier = classifier
        self.mode = mode
        self.n_terms = n_terms
        self.basis_metric = basis_metric
        self.concept_score = concept_score
        self.neg_ratio = neg_ratio
        self.mining_rounds = mining_rounds
        self.hard_fraction = hard_fraction
        self.steps = steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.heldout = heldout
        self.batch_size = batch_size
        self.seed = seed
        self.class_names = class_names
        self.max_images = max_images

    # ---- fitting -----------------------------------------------------------------------------
    def _check_config(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode: expected one of {list(_MODES)}, got {self.mode!r}")
        if self.basis_metric not in _METRICS:
            raise ValueError(
                f"basis_metric: expected one of {list(_METRICS)}, got {self.basis_metric!r}"
            )
        check_positive_ints(
            **{n: getattr(self, n) for n in ("n_terms", "neg_ratio", "steps", "batch_size")}
        )
        if not isinstance(self.mining_rounds, int) or self.mining_rounds < 0:
            raise ValueError(f"mining_rounds: expected an int >= 0, got {self.mining_rounds!r}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction: expected a value in [0, 1], got {self.hard_fraction}")
        if not 0.0 < self.heldout < 1.0:
            raise ValueError(f"heldout: expected a fraction in (0, 1), got {self.heldout}")
        self._scores_by_peak()

    def _linear_head(self) -> nn.Linear:
        if self.classifier is not None:
            _, module = resolve_layer(self.model, self.classifier)
        else:
            linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("classifier: the model has no nn.Linear; use mode='gradcam'")
            module = linears[-1]
        if not isinstance(module, nn.Linear):
            raise ValueError(f"classifier: expected an nn.Linear, got {type(module).__name__}")
        return module

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fx = FeatureExtractor(self.model, [self.layer_])
        with torch.no_grad():
            out = fx(images.to(self._model_device()), return_output=True)
        assert isinstance(out, tuple)
        feats, logits = out
        acts = feats[fx.names[0]]
        if acts.dim() != 4:
            raise ValueError(f"layer: IBD needs a conv layer [B,D,h,w], got {tuple(acts.shape)}")
        return acts.float(), logits.float()

    def fit(
        self,
        data: Any,
        concept_names: Optional[list[str]] = None,
        *,
        trainer: Optional[ConceptTrainer] = None,
        basis: Optional[BasisFunction] = None,
    ) -> IBD:
        """Learn the concept vectors from segmentation data and decompose every class.

        ``data``: a :class:`~pyconcepts.data.ConceptWorld` (its ground-truth masks), a user
        concept folder read by :func:`~pyconcepts.data.load_concept_folder`, a pair
        ``(images [N,3,H,W], masks [N,C,H,W])`` or an iterable of such batches (a batch may
        also be ``(images, labels, masks, ...)``: the masks are the first 4-D tensor after the
        images). ``concept_names`` default to the world's concepts, else ``concept_i``;
        the constructor's ``max_images`` caps the images used.

        ``trainer`` trains the concept classifiers from the training positions (default:
        :func:`train_concept_classifiers` in this process; :func:`pyconcepts.distributed.\
ddp_concept_trainer` runs it under torch DDP on Ray workers); ``basis`` decomposes the classes
        (default: :func:`pyconcepts.ops.greedy_nnls_basis`; :func:`pyconcepts.distributed.\
sharded_basis` splits the classes over Ray tasks).
        """
        self._check_config()
        images, masks, names = _segmentation_data(data, concept_names, self.max_images)
        images = self._check_images(images, "data")
        self._record_fit(images)
        self.layer_ = resolve_layer(
            self.model, self.layer or discover_layers(self.model, images[:1]).feature_map
        )[0]
        gen = torch.Generator().manual_seed(self.seed)
        n = images.shape[0]
        n_held = max(1, round(self.heldout * n)) if n > 1 else 0
        perm = torch.randperm(n, generator=gen)
        held, train = perm[:n_held], perm[n_held:]
        feats, labels, logits, pooled = [], [], [], []
        for start in range(0, n, self.batch_size):
            acts, out = self._features(images[start : start + self.batch_size])
            h, w = acts.shape[-2:]
            m = masks[start : start + self.batch_size].to(acts.device).float()
            m = F.interpolate(m, size=(h, w), mode="nearest") > 0.5
            feats.append(acts.permute(0, 2, 3, 1).cpu())
            labels.append(m.permute(0, 2, 3, 1).cpu())
            logits.append(out.cpu())
            pooled.append(acts.mean((2, 3)).cpu())
        A = torch.cat(feats)  # [N, h, w, D]
        Y = torch.cat(labels)  # [N, h, w, C]
        D, C = A.shape[-1], Y.shape[-1]
        train_fn = trainer or train_concept_classifiers
        W, b = train_fn(A[train].reshape(-1, D), Y[train].reshape(-1, C), gen, self._training())
        held_scores = A[held].reshape(-1, D) @ W.T + b
        self.concept_ap_ = average_precision(held_scores, Y[held].reshape(-1, C)).float()
        centred = W - W.mean(1, keepdim=True)
        self.concept_vectors_ = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.concept_weights_, self.concept_bias_ = W, b
        self.concept_names_ = names
        pooled_all = torch.cat(pooled)
        self.mode_ = self._resolve_mode(pooled_all, torch.cat(logits))
        self.basis_metric_ = (
            ("logit" if self.mode_ == "cam" else "weights")
            if self.basis_metric == "auto"
            else self.basis_metric
        )
        self.feature_mean_, self.metric_ = _feature_metric(pooled_all, self.basis_metric_)
        if self.mode_ == "cam":
            head = self._linear_head()
            class_w = head.weight.detach().float().cpu()
            class_b = (
                head.bias.detach().float().cpu()
                if head.bias is not None
                else torch.zeros(class_w.shape[0])
            )
        else:  # mean Grad-CAM weight vector of each class over (at most 256) fit images
            sub = images[train[:256]].to(self._model_device())
            class_w = mean_class_weights(self.model, self.layer_, sub, self.batch_size).float()
            n_classes = class_w.shape[0]
            class_w, class_b = class_w.cpu(), torch.zeros(n_classes)
        self.class_weights_, self.class_bias_ = class_w, class_b
        self.class_names_ = class_names_of(self.model, class_w.shape[0], self.class_names)
        self._decompose_classes(basis)
        return self

    def _resolve_mode(self, pooled: torch.Tensor, logits: torch.Tensor) -> str:
        if self.mode == "gradcam":
            return "gradcam"
        try:
            head = self._linear_head()
            linear = head.in_features == pooled.shape[1]
            if linear:
                with torch.no_grad():
                    pred = head(pooled.to(head.weight.device, head.weight.dtype)).float().cpu()
                linear = pred.shape == logits.shape and torch.allclose(
                    pred, logits, rtol=1e-3, atol=1e-3 * (1 + float(logits.abs().max()))
                )
        except ValueError:
            linear = False
        if not linear and self.mode == "cam":
            raise ValueError(
                f"mode='cam' needs logits = classifier(global average of {self.layer_!r}), which "
                "does not hold for this model; use mode='gradcam' (or 'auto')"
            )
        return "cam" if linear else "gradcam"

    def _training(self) -> ConceptTraining:
        return ConceptTraining(self.neg_ratio, self.mining_rounds, self.hard_fraction,
                               self.steps, self.lr, self.weight_decay)  # fmt: skip

    def _decompose_classes(self, basis: Optional[BasisFunction] = None) -> None:
        self.basis_indices_, self.basis_coefs_, self.residuals_ = self._bases(
            self.class_weights_, basis
        )
        L = self.metric_
        self.residual_ratio_ = residual_ratio(self.class_weights_ @ L, self.residuals_ @ L).float()
        empty = (self.basis_coefs_ > 0).sum(1) == 0
        if bool(empty.any()):
            names = [self.class_names_[int(k)] for k in empty.nonzero().flatten()[:8]]
            warnings.warn(
                f"{int(empty.sum())} of {len(empty)} classes ({', '.join(names)}"
                f"{', ...' if int(empty.sum()) > 8 else ''}) have an empty concept basis: their "
                "weight vectors point away from every concept vector, so their concept maps are "
                "zero and their scores are all residual; try another layer or more concepts",
                stacklevel=3,
            )

    def _bases(
        self, weights: torch.Tensor, basis: Optional[BasisFunction] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Greedy non-negative bases (indices, coefficients, residual vectors) of the rows of
        ``weights`` in the fitted metric: both sides are mapped by ``L`` so that the kernel's
        Euclidean fit minimises ``‖Lᵀ(w − Σ s_i q_i)‖``. ``basis``: the fitting function
        (default :func:`~pyconcepts.ops.greedy_nnls_basis`; e.g. a sharded one)."""
        Q, L = self.concept_vectors_.to(weights.device), self.metric_.to(weights.device)
        fit = (basis or greedy_nnls_basis)(weights @ L, Q @ L, min(self.n_terms, Q.shape[0]))
        residuals = weights - (fit.coefs[:, :, None] * Q[fit.indices]).sum(1)
        return fit.indices, fit.coefs, residuals

    # ---- explaining --------------------------------------------------------------------------
    def explain(
        self,
        images: torch.Tensor,
        targets: Optional[Any] = None,
        per_image: bool = False,
    ) -> Explanation:
        """Decompose the score of ``targets`` (default: the predicted classes) of each image.

        With ā the reference feature (``feature_mean_``: the fit images' mean pooled feature in
        the logit metric, 0 in the paper's): ``concept_scores [B, N]``: each basis concept's
        peak ``max_hw s_i q_ciᵀ(A_hw − ā)`` (``concept_score="peak"``) or contribution
        ``s_i q_ciᵀ(a − ā)`` to the score (``"contribution"``), 0 outside the basis;
        ``heatmaps [B, T, H, W]``: the basis terms' maps ``s_i q_ciᵀ(A − ā)``, negative parts
        cut to 0 (``heatmap_concepts``: the term's concept, −1 for a zero coefficient);
        ``class_maps``: the positive part of their sum (the concept part of the CAM, without the
        residual). Extras ``[B, T]``: ``basis_indices``, ``basis_coefs``, ``contributions``;
        ``[B]``: ``residual_contribution`` (``rᵀ(a − ā)``), ``bias`` (``b_k + w_kᵀā``),
        ``score`` (the logit in CAM
        mode, ``w̄_kᵀa`` in Grad-CAM mode, ``w_k(a)ᵀa`` per image); ``[B, H, W]``:
        ``residual_heatmap``, ``cam``.

        The class bases are fixed (module docstring); ``per_image=True`` decomposes each image's
        pooled gradient ``w_k(a)`` instead (eq. 12), the whole batch in one
        :func:`~pyconcepts.ops.greedy_nnls_basis` call.
        """
        self._check_fitted()
        images = self._check_images(images).to(self._model_device())
        t = resolve_targets(targets, images.shape[0], len(self.class_names_))
        if not per_image:
            out, t = self._explain_outputs(images, t)
        else:
            cam = grad_cam(self.model, self.layer_, images, t, upsample=False)
            acts, t = cam.activations.float().detach(), cam.targets
            wk = cam.weights.float().detach()
            indices, coefs, resid = self._bases(wk)
            out = dict(zip(self.onnx_outputs, decompose(
                acts, cam.logits.float().detach(), self.concept_vectors_.to(wk.device),
                self.feature_mean_.to(wk.device), indices, coefs, resid,
                torch.zeros(images.shape[0], device=wk.device), images.shape[-2:],
                self._scores_by_peak(),
            )))  # fmt: skip
        return Explanation.from_outputs(
            self.method, self.layer_, self.concept_names_, self.class_names_,
            {k: v.cpu() for k, v in out.items()}, t.cpu(),
        )  # fmt: skip

    # ---- reports -----------------------------------------------------------------------------
    def class_concept_graph(self, min_coef: float = 0.0) -> list[tuple[str, str, float]]:
        """The seed's Fig. 3 as data: ``(class, concept, coefficient)`` for every basis term
        with coefficient > ``min_coef``, classes in order, terms by decreasing coefficient."""
        self._check_fitted()
        edges = []
        for k, cls in enumerate(self.class_names_):
            order = torch.argsort(self.basis_coefs_[k], descending=True)
            for t in order.tolist():
                s = float(self.basis_coefs_[k, t])
                if s > min_coef:
                    edges.append((cls, self.concept_names_[int(self.basis_indices_[k, t])], s))
        return edges

    def plot_class_concept_graph(self, min_coef: float = 0.0) -> Figure:
        """Bipartite plot: classes left, concepts right, link width ∝ coefficient."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        edges = self.class_concept_graph(min_coef)
        concepts = sorted({c for _, c, _ in edges}, key=self.concept_names_.index)
        classes = list(self.class_names_)
        fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(classes), len(concepts)) + 1))
        yc = {c: i / max(1, len(classes) - 1) for i, c in enumerate(classes)}
        yk = {c: i / max(1, len(concepts) - 1) for i, c in enumerate(concepts)}
        top = max((s for _, _, s in edges), default=1.0)
        for cls, con, s in edges:
            ax.plot([0, 1], [yc[cls], yk[con]], color="tab:blue", lw=0.3 + 4 * s / top, alpha=0.6)
        for c, y in yc.items():
            ax.text(-0.02, y, c, ha="right", va="center", fontsize=7)
        for c, y in yk.items():
            ax.text(1.02, y, c, ha="left", va="center", fontsize=7)
        ax.set_xlim(-0.6, 1.6)
        ax.axis("off")
        ax.set_title("IBD: class → concept bases (width ∝ coefficient)", fontsize=9)
        fig.tight_layout()
        return fig

    def ground_truth_scores(
        self, defining: torch.Tensor, k: Optional[int] = None
    ) -> dict[str, torch.Tensor]:
        """:func:`pyconcepts.metrics.ibd.basis_ground_truth` of the class bases against a bool
        ``[n_classes, n_concepts]`` definition matrix (``world.class_concept_matrix()``)."""
        self._check_fitted()
        return basis_ground_truth(self.basis_indices_, self.basis_coefs_, defining, k)

    # ---- persistence / export ----------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {name: getattr(self, name + "_").contiguous() for name in _TENSORS}
        state = {
            "concept_names": self.concept_names_,
            "class_names": self.class_names_,
            "mode": self.mode_,
            "layer": self.layer_,
            "basis_metric": self.basis_metric_,
        }
        return tensors, state

    def _set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        if (
            "feature_mean" not in tensors
            and "metric" not in tensors
            and "concept_vectors" in tensors
        ):
            # saved before the basis metric existed: fitted the paper's way
            d = tensors["concept_vectors"].shape[1]
            tensors = {**tensors, "feature_mean": torch.zeros(d), "metric": torch.eye(d)}
            state = {**state, "basis_metric": "weights"}
        missing = [n for n in _TENSORS if n not in tensors]
        if missing:
            raise KeyError(f"missing tensors {missing}")
        for name in _TENSORS:
            setattr(self, name + "_", tensors[name])
        self.concept_names_ = list(state["concept_names"])
        self.class_names_ = list(state["class_names"])
        self.mode_ = str(state["mode"])
        self.layer_ = str(state["layer"])
        self.basis_metric_ = str(state["basis_metric"])

    def _onnx_module(self) -> nn.Module:
        device = self._model_device()
        tensors = (self.concept_vectors_, self.feature_mean_, self.basis_indices_,
                   self.basis_coefs_, self.residuals_, self.class_bias_)  # fmt: skip
        q, mean, indices, coefs, residuals, bias = (t.to(device) for t in tensors)
        head = _IBDHead(self.model, self.layer_, q, mean, indices, coefs, residuals, bias,
                        self._scores_by_peak())  # fmt: skip
        return head.eval()

    def _scores_by_peak(self) -> bool:
        """Whether concept_scores are the maps' peaks (validates ``concept_score``)."""
        if self.concept_score not in _SCORES:
            raise ValueError(
                f"concept_score: expected one of {list(_SCORES)}, got {self.concept_score!r}"
            )
        return bool(self.concept_score == "peak")


_TENSORS = (
    "concept_vectors", "concept_weights", "concept_bias", "concept_ap", "class_weights",
    "class_bias", "basis_indices", "basis_coefs", "residuals", "residual_ratio", "feature_mean",
    "metric",
)  # fmt: skip


def _feature_metric(pooled: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The contributions' reference ā ``[D]`` and the factor L ``[D, D]`` of the basis metric
    from the fit images' pooled features ``[N, D]``: ``(0, I)`` for the paper's ``"weights"``;
    for ``"logit"`` their mean and the Cholesky factor of their covariance, with a ridge of
    1e-4 × its mean variance (measured: 1e-2 gives the same bases) so that directions the
    features never vary along stay well-posed."""
    d = pooled.shape[1]
    if metric == "weights":
        return torch.zeros(d), torch.eye(d)
    pooled = pooled.double()
    mean = pooled.mean(0)
    centred = pooled - mean
    cov = centred.T @ centred / max(1, pooled.shape[0] - 1)
    ridge = 1e-4 * float(cov.diagonal().mean()) + 1e-12
    factor = torch.linalg.cholesky(cov + ridge * torch.eye(d, dtype=cov.dtype))
    return mean.float(), factor.float()


def decompose(
    acts: torch.Tensor,
    logits: torch.Tensor,
    Q: torch.Tensor,
    mean: torch.Tensor,
    indices: torch.Tensor,
    coefs: torch.Tensor,
    residuals: torch.Tensor,
    bias: torch.Tensor,
    size: Sequence[int],
    peak: bool = False,
) -> tuple[torch.Tensor, ...]:
    """IBD's outputs (``IBD.onnx_outputs`` order) from the layer's activations ``[B, D, h, w]``
    and each image's basis (``indices``/``coefs [B, T]``), residual vector ``[B, D]`` and
    bias ``[B]``, measured from the reference feature ``mean [D]`` (its share of the score
    joins the bias); standard ONNX operators only. ``concept_scores`` are the terms'
    contributions, or with ``peak`` their maps' maxima ``max_hw s_i q_iᵀ(A_hw − ā)``."""
    acts = acts - mean[:, None, None]
    a = acts.mean((2, 3))  # [B, D]
    q = Q[indices]  # [B, T, D]
    terms = coefs * torch.einsum("btd,bd->bt", q, a)
    resid_c = (residuals * a).sum(1)
    bias = bias + ((coefs[:, :, None] * q).sum(1) + residuals) @ mean
    one_hot = (indices[:, :, None] == torch.arange(Q.shape[0], device=Q.device)).to(terms.dtype)
    low = torch.einsum("bt,btd,bdhw->bthw", coefs, q, acts)  # the terms' maps at the layer
    ranked = low.flatten(2).amax(2) if peak else terms
    scores = torch.einsum("bt,btn->bn", ranked, one_hot)
    maps = upsample(low, size)
    resid_map = upsample(torch.einsum("bd,bdhw->bhw", residuals, acts)[:, None], size)[:, 0]
    concept_part = maps.sum(1)
    columns = torch.where(coefs > 0, indices, torch.full_like(indices, -1))
    return (
        logits, scores, maps.clamp_min(0), columns, concept_part.clamp_min(0), indices, coefs,
        terms, resid_c, bias, terms.sum(1) + resid_c + bias, resid_map, concept_part + resid_map,
    )  # fmt: skip


class _IBDHead(nn.Module):
    """images (, targets) → IBD's outputs for the explained class of each image (default: the
    prediction) from the fixed class bases; ``explain`` and the ONNX export both run it."""

    Q: torch.Tensor
    mean: torch.Tensor
    indices: torch.Tensor
    coefs: torch.Tensor
    residuals: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        Q: torch.Tensor,
        mean: torch.Tensor,
        indices: torch.Tensor,
        coefs: torch.Tensor,
        residuals: torch.Tensor,
        bias: torch.Tensor,
        peak: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.peak = peak
        self.fx = FeatureExtractor(model, [layer])
        for name, value in (("Q", Q), ("mean", mean), ("indices", indices), ("coefs", coefs),
                            ("residuals", residuals), ("bias", bias)):  # fmt: skip
            self.register_buffer(name, value.detach().clone())

    def forward(
        self, x: torch.Tensor, targets: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, ...]:
        feats, logits = cast("tuple[dict[str, torch.Tensor], torch.Tensor]",
                             self.fx(x, return_output=True))  # fmt: skip
        acts = next(iter(feats.values())).float()
        k = logits.argmax(1) if targets is None else targets
        return decompose(
            acts, logits.float(), self.Q, self.mean, self.indices[k], self.coefs[k],
            self.residuals[k], self.bias[k], x.shape[-2:], self.peak,
        )  # fmt: skip


@dataclass(frozen=True)
class ConceptTraining:
    """IBD's concept-classifier settings (the explainer's constructor values of the same names)."""

    neg_ratio: int
    mining_rounds: int
    hard_fraction: float
    steps: int
    lr: float
    weight_decay: float


ConceptTrainer = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator, ConceptTraining],
    tuple[torch.Tensor, torch.Tensor],
]
BasisFunction = Callable[[torch.Tensor, torch.Tensor, int], BasisFit]


class _ConceptClassifiers(nn.Module):
    """All concept classifiers as one linear map (what DDP wraps)."""

    def __init__(self, n_features: int, n_concepts: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.zeros(n_concepts, n_features))
        self.b = nn.Parameter(torch.zeros(n_concepts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W.T + self.b


def train_concept_classifiers(
    X: torch.Tensor,
    Y: torch.Tensor,
    gen: torch.Generator,
    settings: ConceptTraining,
    group: Optional[Any] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IBD's concept classifiers ``(W [C, D], b [C])`` from positions' features ``X [P, D]``
    and concept labels ``Y [P, C]`` (bool): weighted BCE over each concept's selected positions
    (all positives + neg_ratio× negatives, re-mined every round), full-batch Adam. Features are
    divided by one global scale during training (the direction of w_c is unchanged).

    ``group``: a ``torch.distributed`` process group whose ranks each hold one row block of
    the positions (rank order = row order) and the same ``gen`` state; the gradients are
    all-reduced by DDP, and the mining (per-column top-k over all positions) sees every rank's
    scores and labels (``[P, C]``, gathered; the features ``[P, D]`` stay split). Every rank
    returns the same result, equal to the single-process one up to floating-point summation
    order. None: ``X`` and ``Y`` are all the positions.
    """
    dist = torch.distributed
    world = 1 if group is None else dist.get_world_size(group)
    local = X.shape[0]
    sizes = [local] if group is None else _all_sizes(local, group)
    first = sum(sizes[: 0 if group is None else dist.get_rank(group)])
    P, D, C = sum(sizes), X.shape[1], Y.shape[1]
    if group is None:
        scale = X.std().clamp_min(1e-12)
    else:  # the same unbiased std over all ranks' features
        count = P * D
        mean = _summed(X.double().sum(), group) / count
        var = _summed(((X.double() - mean) ** 2).sum(), group) / max(count - 1, 1)
        scale = var.sqrt().float().clamp_min(1e-12)
    Xs = X / scale
    labels = _gathered(Y, sizes, group)  # [P, C]
    n_pos = labels.sum(0)
    n_neg = torch.minimum(n_pos * settings.neg_ratio, P - n_pos)
    model = _ConceptClassifiers(D, C)
    step_model: nn.Module = model
    if group is not None:
        step_model = nn.parallel.DistributedDataParallel(model, process_group=group)
    W, b = model.W, model.b
    opt = torch.optim.Adam([W, b], lr=settings.lr)
    Yf = Y.float()
    scores = torch.rand(P, C, generator=gen)  # round 0: random negatives
    for rnd in range(settings.mining_rounds + 1):
        n_hard = (n_neg.double() * (settings.hard_fraction if rnd else 0.0)).long()
        hard = _top_per_column(torch.where(labels, -torch.inf, scores), n_hard)
        rest = torch.rand(P, C, generator=gen).masked_fill(labels | hard, -torch.inf)
        chosen = hard | _top_per_column(rest, n_neg - n_hard)
        weight = (labels | chosen).float()
        weight = (weight / weight.sum(0).clamp_min(1))[first : first + local]
        for _ in range(settings.steps):
            opt.zero_grad()
            z = step_model(Xs)
            loss = (F.binary_cross_entropy_with_logits(z, Yf, reduction="none") * weight).sum()
            # DDP averages the ranks' gradients: scaled by the world size they sum
            loss = world * loss + settings.weight_decay * (W * W).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores = _gathered(model(Xs), sizes, group)
    return (W.detach() / scale), b.detach()


def _all_sizes(local: int, group: Any) -> list[int]:
    world = torch.distributed.get_world_size(group)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([local]), group=group)
    return [int(s) for s in sizes]


def _summed(value: torch.Tensor, group: Any) -> torch.Tensor:
    value = value.clone()
    torch.distributed.all_reduce(value, group=group)
    return value


def _gathered(rows: torch.Tensor, sizes: list[int], group: Optional[Any]) -> torch.Tensor:
    """Every rank's row block concatenated in rank order (``rows`` itself without a group)."""
    if group is None:
        return rows
    wide = max(sizes)
    padded = torch.zeros(wide, *rows.shape[1:], dtype=rows.dtype)
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _top_per_column(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``counts[c]`` largest finite entries of each column."""
    order = torch.argsort(values, dim=0, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(values.shape[0])[:, None].expand_as(order))
    return (rank < counts[None, :]) & torch.isfinite(values)


def _segmentation_data(
    data: Any, concept_names: Optional[list[str]], max_images: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images, masks, concept names) from a ConceptWorld, a pair or an iterable of batches."""
    from pyconcepts.data.concept_folder import ConceptData
    from pyconcepts.data.concept_world import ConceptWorld

    if isinstance(data, ConceptWorld):
        n = len(data) if max_images is None else min(len(data), max_images)
        images, masks = data.image(slice(0, n)), data.concept_masks(slice(0, n))
        names = list(data.concepts) if concept_names is None else list(concept_names)
    elif isinstance(data, ConceptData):
        images, masks = data.images[:max_images], data.masks[:max_images]
        names = list(data.names) if concept_names is None else list(concept_names)
    else:
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            batches: Any = [data]
        else:
            batches = data
        imgs, msks, count = [], [], 0
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or not isinstance(batch[0], torch.Tensor):
                raise TypeError(
                    "data: expected a ConceptWorld, (images, masks) or batches of "
                    f"(images, [labels,] masks, ...), got a batch of {type(batch).__name__}"
                )
            found = [t for t in batch[1:] if isinstance(t, torch.Tensor) and t.dim() == 4]
            if not found:
                raise ValueError("data: a batch has no masks tensor [B, C, H, W] after the images")
            imgs.append(batch[0])
            msks.append(found[0])
            count += batch[0].shape[0]
            if max_images is not None and count >= max_images:
                break
        if not imgs:
            raise ValueError("data: expected at least one batch, got none")
        images, masks = torch.cat(imgs)[:max_images], torch.cat(msks)[:max_images]
        n_c = masks.shape[1]
        names = (
            [f"concept_{i}" for i in range(n_c)] if concept_names is None else list(concept_names)
        )
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"masks: expected [N, C, {images.shape[-2]}, {images.shape[-1]}] for images "
            f"{tuple(images.shape)}, got {tuple(masks.shape)}"
        )
    if len(names) != masks.shape[1]:
        raise ValueError(f"concept_names: expected {masks.shape[1]} names, got {len(names)}")
    if images.shape[0] < 2:
        raise ValueError(
            f"data: expected at least 2 images (train + held-out), got {images.shape[0]}"
        )
    return images.float(), masks, names
