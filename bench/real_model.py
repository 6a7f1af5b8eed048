"""Every method on a real ImageNet CNN with only the model and photos given.

``python -m bench.real_model [--methods mace,srae] [--images 40]``: loads EfficientNet-Lite0
(the ``[imagenet]`` extra, README "ImageNet models"), builds a fit set from scikit-image's
photos (deterministic crops and flips), fits each explainer with its defaults — only the run
length of the slow optimisations is shortened, as stated in the table — and explains a
half-cat, half-espresso picture for the cat class. Reports per method: fit time, explain time
next to the model's forward+backward, the peak resident memory of fit (in this process) and
of one explain call (in a fresh process holding the model and the saved explainer) above the
memory before it, and the share of the class map's mass on the cat half (uniform: 0.5) and
the map's ROC-AUC at telling the cat half's pixels from the rest (flat: 0.5; unlike the mass,
not raised by sharpening the map), next to Grad-CAM at the same layer. Writes
``bench/results/real_model.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pyconcepts.attribution.gradcam import grad_cam
from pyconcepts.data.photos import cat_and_cup, left_half_mass, photo, photo_batch
from pyconcepts.metrics.ground_truth import region_auc
from pyconcepts.persistence import atomic_write_bytes


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_freed_heap() -> None:
    """Hand the heap's freed pages back to the OS (glibc ``malloc_trim``), so memory an earlier
    call freed but kept resident does not hide the next call's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may be understated after big calls
        pass


def peak_extra_mib(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()`` and its peak resident memory above the resident memory before it (Linux:
    freed heap pages are released and the peak is reset through /proc/self/clear_refs
    first)."""
    gc.collect()
    _release_freed_heap()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mib("VmRSS")
    out = call()
    return out, _status_mib("VmHWM") - before


_FRESH = """
import sys, torch
from pathlib import Path
from pyconcepts.explainers import {cls}
from pyconcepts.models import load

model = load("efficientnet-lite0")
explainer = {cls}.load(sys.argv[1], model=model)
picture = torch.load(sys.argv[2], weights_only=True)
status = lambda f: next(int(l.split()[1]) for l in Path("/proc/self/status").read_text()
                        .splitlines() if l.startswith(f + ":"))
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
explainer.explain(picture, targets=[int(sys.argv[3])])
print((status("VmHWM") - before) / 1024)
"""


def fresh_explain_mib(explainer: Any, folder: Path, picture: torch.Tensor, cat: int) -> float:
    """Peak resident memory of one explain call above the process's memory before it, in a
    new process holding only the model and the saved explainer (nothing cached by earlier
    calls)."""
    saved = explainer.save(folder / "explainer.pcx")
    torch.save(picture, folder / "picture.pt")
    code = _FRESH.format(cls=type(explainer).__name__)
    run = subprocess.run(
        [sys.executable, "-c", code, str(saved), str(folder / "picture.pt"), str(cat)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(run.stdout.strip().splitlines()[-1])


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def factories(model: nn.Module, images: torch.Tensor) -> dict[str, tuple[Callable[[], Any], Any]]:
    """method → (unfitted explainer with defaults, fit data); IBD learns its concepts from a
    concept world rendered at the model's input size and normalised like its inputs."""
    from pyconcepts.data import ConceptWorld
    from pyconcepts.explainers import IBD, MACE, SRAE, AfI, FilterPatterns

    world = ConceptWorld(48, image_size=tuple(images.shape[-2:]), seed=0)
    pre = model.preprocessing  # type: ignore[attr-defined]
    mean, std = (torch.tensor(v)[:, None, None] for v in (pre.mean, pre.std))
    concepts = ((world.image(slice(None)) - mean) / std, world.concept_masks(slice(None)))
    with torch.no_grad():
        labels = torch.cat([model(x).argmax(1) for x in images.split(8)])
    return {
        "mace": (lambda: MACE(model, epochs=8), images),
        "srae": (lambda: SRAE(model, epochs=20), images),
        "afi": (lambda: AfI(model, max_iter=3, impression_steps=0), (images, labels)),
        "pattern_mining": (lambda: FilterPatterns(model), images),
        "ibd": (lambda: IBD(model, steps=20, mining_rounds=1), concepts),
    }


def run_method(
    model: nn.Module, method: str, make: Callable[[], Any], data: Any, picture: torch.Tensor,
    cat: int,
) -> dict[str, Any]:  # fmt: skip
    (explainer, fit_s), fit_extra = peak_extra_mib(lambda: _timed(lambda: make().fit(data)))
    explainer.explain(picture, targets=[cat])  # warm-up: first-call allocations
    result, explain_s = _timed(lambda: explainer.explain(picture, targets=[cat]))
    with tempfile.TemporaryDirectory() as tmp:
        extra = fresh_explain_mib(explainer, Path(tmp), picture, cat)
    layer = model.zoo_info["feature_layer"]  # type: ignore[index]  # every method's map layer
    cam = grad_cam(model, layer, picture, torch.tensor([cat])).cam[0]
    mass = left_half_mass(result.class_map(0))
    cat_half = torch.zeros(1, *cam.shape, dtype=torch.bool)
    cat_half[..., : cam.shape[-1] // 2] = True
    return {
        "method": method,
        "repr": repr(explainer),
        "fit_s": round(fit_s, 2),
        "fit_peak_extra_mib": round(fit_extra, 1),
        "explain_s": round(explain_s, 3),
        "explain_peak_extra_mib": round(extra, 1),
        "cat_half_mass": round(mass, 3),
        "gradcam_cat_half_mass": round(left_half_mass(cam), 3),
        "cat_half_auc": round(float(region_auc(result.class_map(0)[None], cat_half)), 3),
        "gradcam_cat_half_auc": round(float(region_auc(cam[None], cat_half)), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="mace,srae,afi,pattern_mining,ibd")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--out", default="bench/results/real_model.json")
    args = parser.parse_args(argv)
    from pyconcepts.models import load

    torch.manual_seed(0)
    model = load("efficientnet-lite0")
    images = photo_batch(model, args.images)
    picture = cat_and_cup(model)
    chelsea = model.preprocess(photo("chelsea"))  # type: ignore[operator]

    def forward_backward() -> None:
        x = picture.clone().requires_grad_(True)
        model(x).max().backward()

    with torch.no_grad():
        cat = int(model(chelsea).argmax(1))
    forward_backward()
    _, fb_s = _timed(forward_backward)
    rows = []
    for method, (make, data) in factories(model, images).items():
        if method in args.methods.split(","):
            row = run_method(model, method, make, data, picture, cat)
            row["model_forward_backward_s"] = round(fb_s, 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    doc = {"cat_class": cat, "rows": rows}
    atomic_write_bytes(Path(args.out), json.dumps(doc, indent=2).encode())


if __name__ == "__main__":
    main()
