"""``check_explainer``: the contract every explainer must keep, as a reusable check set.

Like scikit-learn's ``check_estimator``: give it a factory for an unfitted explainer, the data
to fit on and a batch of images, and it runs every check, raising ``AssertionError`` with the
check's name on the first failure. Returns the names of the checks that ran (and those skipped,
with why). Used by the project's own tests on all five explainers; usable on third-party
explainers that subclass :class:`~pyconcepts.explainers.base.ConceptExplainer`.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from pyconcepts.errors import NotFittedError
from pyconcepts.explainers.base import ConceptExplainer
from pyconcepts.explainers.result import Explanation


@dataclass
class CheckReport:
    """Names of the checks that passed and of those skipped (with the reason)."""

    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _fit(make: Callable[[], ConceptExplainer], data: Any, seed: int) -> ConceptExplainer:
    torch.manual_seed(seed)
    return make().fit(data)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4))


def check_explainer(
    make: Callable[[], ConceptExplainer],
    data: Any,
    images: torch.Tensor,
    *,
    atol: float = 1e-5,
    onnx_atol: float = 1e-3,
    check_onnx: bool = True,
    seed: int = 0,
) -> CheckReport:
    """Run the explainer contract checks; raises AssertionError naming the failed check.

    Args:
        make: returns a new, unfitted explainer (on the same model each time).
        data: what ``fit`` takes.
        images: a batch ``[B,C,H,W]`` (B ≥ 3) to explain.
        atol: tolerance for "same result" comparisons in torch.
        onnx_atol: tolerance between onnxruntime and torch outputs.
        check_onnx: also export and run in onnxruntime (needs the ``[onnx]`` extra).
    """
    report = CheckReport()

    def ok(name: str, cond: bool, detail: str = "") -> None:
        if not cond:
            raise AssertionError(f"check_explainer: {name} failed {detail}".rstrip())
        report.passed.append(name)

    if images.shape[0] < 3:
        raise ValueError(f"images: expected a batch of at least 3, got {images.shape[0]}")
    fresh = make()
    model = fresh.model
    ok("constructor_stores_only", not any(k.endswith("_") and not k.startswith("_")
       for k in vars(fresh)) and not fresh.is_fitted)  # fmt: skip
    rebuilt = type(fresh)(model, **fresh.get_config())  # type: ignore[call-arg]
    ok("config_round_trips", rebuilt.get_config() == fresh.get_config())
    for name, call in (
        ("explain_before_fit_raises", lambda: fresh.explain(images)),
        ("save_before_fit_raises", lambda: fresh.save(Path(tempfile.gettempdir()) / "never.pcx")),
    ):
        try:
            call()
        except NotFittedError:
            ok(name, True)
        else:
            ok(name, False, "(no NotFittedError)")

    params_before, was_training = _params(model), model.training
    images_before = images.clone()
    hooks_before = _hooks(model)
    torch.manual_seed(seed)
    fitted = fresh.fit(data)
    ok("fit_returns_self", fitted is fresh)
    ok("fitted_after_fit", fitted.is_fitted)
    result = fitted.explain(images)
    ok("explain_returns_explanation", isinstance(result, Explanation))
    ok("rows_match_batch", len(result) == images.shape[0] and result.logits.shape[0] == len(result))
    ok("concept_names_match_scores", result.concept_scores.shape[1] == len(result.concept_names))
    ok("scores_finite", bool(torch.isfinite(result.concept_scores).all()))
    ok("inputs_unchanged", torch.equal(images, images_before))
    ok("model_unchanged", all(torch.equal(a, b) for a, b in zip(params_before, _params(model))))
    ok("model_mode_restored", model.training == was_training)
    ok("no_hooks_left", _hooks(model) == hooks_before)

    again = _fit(make, data, seed).explain(images)
    ok("fit_is_deterministic_given_the_seed",
       _close(again.concept_scores, result.concept_scores, atol))  # fmt: skip

    single = fitted.explain(images[:1])
    ok("batch_of_one", len(single) == 1)
    ok("rows_independent_of_batch",
       _close(single.concept_scores[0], result.concept_scores[0], max(atol, 1e-4)))  # fmt: skip
    odd = fitted.explain(images[:3])
    ok("odd_batch_size", len(odd) == 3)

    zeros = fitted.explain(torch.zeros_like(images[:2]))
    ok("all_zero_images_give_finite_scores", bool(torch.isfinite(zeros.concept_scores).all()))

    bad_inputs: list[tuple[str, Any, type[Exception]]] = [
        ("three_d_input_rejected", images[0], ValueError),
        ("integer_input_rejected", images.to(torch.int64), TypeError),
        ("nan_input_rejected", torch.full_like(images[:1], float("nan")), ValueError),
        ("empty_batch_rejected", images[:0], ValueError),
        ("wrong_channels_rejected", images[:, :1], ValueError),
        ("non_tensor_rejected", images.tolist(), TypeError),
    ]
    for name, bad, error in bad_inputs:
        try:
            fitted.explain(bad)
        except error:
            ok(name, True)
        except Exception as exc:  # the wrong error type is a failure, with what was raised
            ok(name, False, f"(raised {type(exc).__name__}: {exc}, expected {error.__name__})")
        else:
            ok(name, False, f"(accepted, expected {error.__name__})")

    with tempfile.TemporaryDirectory() as tmp:
        path = fitted.save(Path(tmp) / "explainer.pcx")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # same model: no "other weights" warning expected
            loaded = type(fitted).load(path, model=model)
        reloaded = loaded.explain(images)
        ok("save_load_same_scores", _close(reloaded.concept_scores, result.concept_scores, atol))
        ok("save_load_same_names", reloaded.concept_names == result.concept_names)
        ok("save_load_same_heatmaps", (reloaded.heatmaps is None) == (result.heatmaps is None)
           and (result.heatmaps is None or _close(reloaded.heatmaps, result.heatmaps, atol)))  # type: ignore[arg-type]  # fmt: skip
        loaded.save(Path(tmp) / "again.pcx")
        ok("loaded_explainer_saves_again", (Path(tmp) / "again.pcx").is_file())

        if check_onnx:
            _check_onnx(fitted, images, Path(tmp), onnx_atol, ok, report)
        else:
            report.skipped["onnx"] = "check_onnx=False"
    return report


def _check_onnx(
    fitted: ConceptExplainer,
    images: torch.Tensor,
    folder: Path,
    atol: float,
    ok: Callable[..., None],
    report: CheckReport,
) -> None:
    try:
        from pyconcepts.export import OnnxExplainer
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        report.skipped["onnx"] = str(exc)
        return
    path = fitted.export_onnx(folder / "explainer.onnx")
    served = OnnxExplainer(path)
    ok("onnx_metadata", served.method == fitted.method)
    for n in (1, min(7, images.shape[0])):
        want = fitted.explain(images[:n])
        got = served.explain(images[:n])
        ok(f"onnx_batch_{n}_scores", _close(got.concept_scores, want.concept_scores, atol),
           f"(max diff {_max_diff(got.concept_scores, want.concept_scores)})")  # fmt: skip
        ok(f"onnx_batch_{n}_logits", _close(got.logits, want.logits, atol))
        if want.heatmaps is not None:
            ok(f"onnx_batch_{n}_heatmaps", got.heatmaps is not None
               and _close(got.heatmaps, want.heatmaps, atol))  # fmt: skip


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else None
