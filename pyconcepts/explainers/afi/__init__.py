"""AfI — Attacking for Interpretability (Wu et al., CVPR 2020), global concept attribution.

Stage 1 (feature attribution): per class y, a *global feature occluder* δ is learned with Adam so
that ``x − δ`` and ``t(x − δ)`` are no longer classified y for every image of the class (seed
eqs. 4–5); the mean drop of every neuron's activation, negatives zeroed, is its feature
importance score (FIS, eqs. 6–7). Stage 2 (concept attribution): FIS summed per feature map and
normalised to [0, 1] give channel importance scores (CIS, eq. 8); ``Σ_c w_c·A_c`` is the class's
meta-detector in each layer (eq. 9). Class impressions maximise a meta-detector's total
activation; MMD between meta-detector outputs of probe images with a concept and a benchmark set
without it, summed over layers and normalised, is the concept's importance to the class.

The functions below are the method's steps on any torch classifier; :class:`AfI` strings them
together as a ``ConceptExplainer``. Every choice the seed leaves open is a parameter whose
default is documented here and in ``docs/methods.md`` (section AfI).
"""

from pyconcepts.explainers.afi.concepts import (
    class_impressions,
    concept_importance,
    concept_presence,
    distillation_test,
    editing_curves,
    own_detector,
    pick_impression_layer,
    probe_sets,
    total_variation,
)
from pyconcepts.explainers.afi.explainer import (
    AfI,
    agreement_weighted,
    plot_editing_curves,
    pyplot,
)
from pyconcepts.explainers.afi.occluders import (
    OccluderFit,
    ValidRange,
    apply_transform,
    channel_importance,
    draw_transform,
    features,
    features_and_logits,
    fit_occluders,
    heatmaps,
    importance_scores,
    layer_outputs,
    meta_detector,
    middle_layers,
    occlude,
    random_transform,
)

__all__ = [
    "AfI", "OccluderFit", "ValidRange", "agreement_weighted", "apply_transform",
    "channel_importance", "class_impressions", "concept_importance", "concept_presence",
    "distillation_test", "draw_transform", "editing_curves", "features",
    "features_and_logits", "fit_occluders", "heatmaps", "importance_scores", "layer_outputs",
    "meta_detector", "middle_layers", "occlude", "own_detector", "pick_impression_layer",
    "plot_editing_curves", "probe_sets", "pyplot", "random_transform", "total_variation",
]  # fmt: skip
