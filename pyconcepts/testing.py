"""``check_explainer``: the contract every explainer must keep, as a reusable check set.

Like scikit-learn's ``check_estimator``: give it a factory for an unfitted explainer, the data
to fit on and a batch of images, and it runs every check, raising ``AssertionError`` with the
check's name on the first failure. Returns the names of the checks that ran (and those skipped,
with why). Used by the project's own tests on all five explainers; usable on third-party
explainers that subclass :class:`~pyconcepts.explainers.base.ConceptExplainer`.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from pyconcepts.errors import EmptyHeatmapWarning, NotFittedError, OutOfMemoryError
from pyconcepts.explainers.base import ConceptExplainer
from pyconcepts.explanation import Explanation
from pyconcepts.models.features import parse_layer


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


def _fit(
    make: Callable[[], ConceptExplainer], data: Any, seed: int, fit_kwargs: dict[str, Any]
) -> ConceptExplainer:
    torch.manual_seed(seed)
    return make().fit(data, **fit_kwargs)


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
    fit_kwargs: Optional[dict[str, Any]] = None,
    memory_calls: int = 100,
) -> CheckReport:
    """Run the explainer contract checks; raises AssertionError naming the failed check.

    Args:
        make: returns a new, unfitted explainer (on the same model each time).
        data: what ``fit`` takes.
        images: a batch ``[B,C,H,W]`` (B ≥ 3) to explain.
        atol: tolerance for "same result" comparisons in torch.
        onnx_atol: tolerance between onnxruntime and torch outputs.
        check_onnx: also export and run in onnxruntime (needs the ``[onnx]`` extra).
        seed: torch's seed before each fit (fits must be deterministic given it).
        fit_kwargs: extra keyword arguments of ``fit`` (epochs, progress, ...).
        memory_calls: explain calls (on 2 images) whose resident-memory growth must stay
            ≤ 10 %; 0 skips the check.

    Give images with height ≠ width, so that a swap of the two cannot pass. The fault checks
    raise from inside a forward call half-way through a fit (KeyboardInterrupt, simulated out of
    memory) and inside explain; the zero-layer check forces the explained layer's output to 0.
    """
    fit_kwargs = dict(fit_kwargs or {})
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
    fitted = fresh.fit(data, **fit_kwargs)
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

    height, width = images.shape[-2:]
    if height == width:
        report.skipped["non_square"] = "square images: a height/width swap cannot be detected"
    if result.heatmaps is not None:
        got = tuple(result.heatmaps.shape)
        ok("heatmaps_at_input_size", got[-2:] == (height, width), f"(heatmaps {got})")

    with _counting_forwards() as calls:
        refitted = _fit(make, data, seed, fit_kwargs)
    again = refitted.explain(images)
    ok("fit_is_deterministic_given_the_seed",
       _close(again.concept_scores, result.concept_scores, atol))  # fmt: skip
    _check_faults(make, fitted, data, images, result, seed, fit_kwargs, calls[0], atol, ok)

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
        ("wrong_size_rejected", _other_size(images), ValueError),
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
        for inplace in (True, False):
            twin = _with_inplace_relus(model, inplace)
            same = type(fitted).load(path, model=twin).explain(images)
            ok(f"relu_inplace_{inplace}_same_scores",
               _close(same.concept_scores, result.concept_scores, atol))  # fmt: skip

        if check_onnx:
            _check_onnx(fitted, images, Path(tmp), onnx_atol, ok, report)
        else:
            report.skipped["onnx"] = "check_onnx=False"
    _check_zero_layer(fitted, images, ok, report)
    _check_memory(fitted, images[:2], memory_calls, ok, report)
    return report


@contextlib.contextmanager
def _counting_forwards() -> Iterator[list[int]]:
    """Counts forward calls of every module while active (a global hook, removed after)."""
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    handle = register_module_forward_hook(count)
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def _fault_at(call: int, error: BaseException) -> Iterator[None]:
    """Raise ``error`` from the ``call``-th module forward call (1-based) while active."""
    seen = [0]

    def fault(*_: Any) -> None:
        seen[0] += 1
        if seen[0] == call:
            raise error

    handle = register_module_forward_hook(fault)
    try:
        yield
    finally:
        handle.remove()


def _check_faults(
    make: Callable[[], ConceptExplainer],
    fitted: ConceptExplainer,
    data: Any,
    images: torch.Tensor,
    result: Explanation,
    seed: int,
    fit_kwargs: dict[str, Any],
    fit_calls: int,
    atol: float,
    ok: Callable[..., None],
) -> None:
    """Interrupted fits leave the explainer as it was; out of memory is a clean, typed error."""
    model = fitted.model
    hooks, mode = _hooks(model), model.training
    midway = max(1, fit_calls // 2)  # a forward call half-way through a fit
    fresh = make()
    torch.manual_seed(seed)
    try:
        with _fault_at(midway, KeyboardInterrupt()):
            fresh.fit(data, **fit_kwargs)
    except KeyboardInterrupt:
        ok("interrupted_fit_leaves_unfitted", not fresh.is_fitted
           and not any(k.endswith("_") and not k.startswith("_") for k in vars(fresh)))  # fmt: skip
    else:
        ok("interrupted_fit_leaves_unfitted", False, "(the interrupt did not propagate)")
    ok("interrupted_fit_removes_hooks", _hooks(model) == hooks)
    ok("interrupted_fit_restores_model_mode", model.training == mode)
    try:
        with _fault_at(midway, torch.OutOfMemoryError("simulated out of memory")):
            fitted.fit(data, **fit_kwargs)
    except OutOfMemoryError:
        ok("refit_out_of_memory_keeps_old_state",
           _close(fitted.explain(images).concept_scores, result.concept_scores, atol))  # fmt: skip
    else:
        ok("refit_out_of_memory_keeps_old_state", False, "(no OutOfMemoryError)")
    try:
        with _fault_at(1, torch.OutOfMemoryError("simulated out of memory")):
            fitted.explain(images)
    except OutOfMemoryError as exc:
        ok("explain_out_of_memory_is_typed", "explain" in str(exc))
    else:
        ok("explain_out_of_memory_is_typed", False, "(no OutOfMemoryError)")
    ok("out_of_memory_removes_hooks", _hooks(model) == hooks)
    ok("explain_works_after_out_of_memory",
       _close(fitted.explain(images).concept_scores, result.concept_scores, atol))  # fmt: skip


def _other_size(images: torch.Tensor) -> torch.Tensor:
    """The images with height and width swapped (cropped by 8 columns when square)."""
    if images.shape[-2] != images.shape[-1]:
        return images.transpose(-1, -2).contiguous()
    return images[..., :-8].contiguous()


def _with_inplace_relus(model: nn.Module, inplace: bool) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU`` set to ``inplace``."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = inplace
    return twin


def _check_zero_layer(
    fitted: ConceptExplainer, images: torch.Tensor, ok: Callable[..., None], report: CheckReport
) -> None:
    """With the explained layer's output forced to zero, outputs stay finite and images whose
    heatmaps are all zero are reported by an EmptyHeatmapWarning."""
    layer = getattr(fitted, "layer_", None) or getattr(fitted, "layer", None)
    if not isinstance(layer, str) or not layer:
        report.skipped["zero_layer"] = "the explainer has no single explained layer"
        return
    address = parse_layer(fitted.model, layer)
    if address.port == "input":  # zero what the layer receives
        handle = address.module.register_forward_pre_hook(lambda _m, args: (args[0] * 0, *args[1:]))
    else:
        handle = address.module.register_forward_hook(lambda _m, _i, out: out * 0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            zero = fitted.explain(images)
    finally:
        handle.remove()
    ok("zero_layer_scores_finite", bool(torch.isfinite(zero.concept_scores).all()))
    maps = zero.class_maps if zero.class_maps is not None else zero.heatmaps
    if maps is not None:
        ok("zero_layer_maps_finite", bool(torch.isfinite(maps).all()))
        empty = bool((maps.flatten(1) == 0).all(1).any())
        warned = any(issubclass(w.category, EmptyHeatmapWarning) for w in caught)
        ok("all_zero_maps_warned", warned == empty, f"(empty maps: {empty}, warned: {warned})")


def _rss_bytes() -> Optional[int]:
    """Resident memory of this process (Linux /proc), or None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _check_memory(
    fitted: ConceptExplainer,
    images: torch.Tensor,
    calls: int,
    ok: Callable[..., None],
    report: CheckReport,
) -> None:
    """``calls`` explain calls grow resident memory by at most 10 % (after 5 warm-up calls)."""
    if calls <= 0 or _rss_bytes() is None:
        report.skipped["memory"] = "memory_calls=0" if calls <= 0 else "no /proc/self/statm"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):
            fitted.explain(images)
        gc.collect()
        before = _rss_bytes() or 0
        for _ in range(calls):
            fitted.explain(images)
        gc.collect()
        after = _rss_bytes() or 0
    ok(f"memory_after_{calls}_explains", after <= 1.1 * before,
       f"(resident memory {before / 2**20:.1f} -> {after / 2**20:.1f} MiB)")  # fmt: skip


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
        ok(f"onnx_batch_{n}_same_metadata",
           (got.method, got.layer, got.concept_names, got.class_names)
           == (want.method, want.layer, want.concept_names, want.class_names))  # fmt: skip
        theirs, ours = got.tensors(), want.tensors()
        ok(f"onnx_batch_{n}_same_fields", sorted(theirs) == sorted(ours),
           f"(onnx {sorted(theirs)}, torch {sorted(ours)})")  # fmt: skip
        for name, value in ours.items():
            other = theirs[name]
            ok(f"onnx_batch_{n}_{name}", other.dtype == value.dtype and _close(other, value, atol),
               f"(dtype {other.dtype} vs {value.dtype}, shape {tuple(other.shape)} vs "
               f"{tuple(value.shape)}, max diff {_max_diff(other, value)})")  # fmt: skip


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else None


def quick_explainers(
    world: Any, vgg: nn.Module, resnet: nn.Module
) -> dict[str, tuple[Callable[[], ConceptExplainer], Any, dict[str, Any]]]:
    """Small, fast configurations of the five explainers: method → (factory, fit data, fit
    keyword arguments). ``world`` is a ConceptWorld, ``vgg``/``resnet`` the two zoo
    architectures (trained or not; SRAE and AfI explain the two classes that ``vgg`` classifies
    correctly most often). Used by the contract tests and the serving benchmark."""
    from pyconcepts.explainers import IBD, MACE, SRAE, AfI, FilterPatterns

    pair = world.tensors()
    with torch.no_grad():  # two classes the vgg gets right most often (AfI learns from those)
        hits = pair[1][vgg(pair[0]).argmax(1) == pair[1]]
    two = sorted(torch.bincount(hits, minlength=2).argsort(descending=True, stable=True)[:2])
    classes = [int(c) for c in two]
    return {
        "mace": (
            lambda: MACE(vgg, layer="features.relu4", n_concepts=3, embedding_sizes=(16, 8),
                         epochs=1, batch_size=32),
            pair,
            {"progress": False},
        ),
        "srae": (
            lambda: SRAE(vgg, classes=classes, hidden=(16, 8), n_features=3, epochs=1,
                         batch_size=64),
            pair,
            {"progress": False},
        ),
        "afi": (
            lambda: AfI(vgg, classes=classes, max_iter=2, impression_steps=1, n_probe=4,
                        holdout_fraction=0.25),
            world,
            {"progress": False},
        ),
        "pattern_mining": (
            lambda: FilterPatterns(vgg, "features.relu4", patch_size=16, n_candidates=8,
                                   n_patches=2, batch_size=32, tau_support=0.3),
            (pair[0][:16], pair[1][:16]),
            {},
        ),
        "ibd": (lambda: IBD(resnet, steps=5, mining_rounds=1), world, {}),
    }  # fmt: skip
