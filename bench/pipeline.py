"""End to end: images explained per second, per method, against the tools users would pick.

For each method (a fitted explainer on a zoo model: the method's default head sizes, short fits;
``--quick``: the small test configurations) and batch size, one process times on the same
images, interleaved round by round (:func:`bench._suite.run_kernel`):

- ``pyconcepts``: ``explainer.explain(images)`` (the Python API, torch);
- ``model forward``: the classifier alone under ``torch.no_grad()`` — what the explanation
  explains, so ``pyconcepts / model forward − 1`` is the explain step's overhead;
- ``onnxruntime``: the ``export_onnx`` graph in :class:`~pyconcepts.export.OnnxExplainer`;
- ``HTTP``: the service (:func:`pyconcepts.serve.build_server`, in this process on a free port)
  answering the batch as one PNG per request from keep-alive client threads, one per image up
  to the service's ``max_concurrency`` (32; it answers 503 beyond);
- peers: Captum's ``LayerGradCam`` at the explained layer (bilinear to input size), Captum's
  ``TCAV`` (two concepts at the explained layer, CAVs trained before timing), pytorch-grad-cam's
  ``GradCAM``, and a plain-torch reimplementation of the method's explain step (every map of
  every class computed and upsampled, the target's picked).

Outputs are checked to agree before timing wherever they are comparable (ONNX and HTTP against
the torch explanation; the plain-torch twin's scores and heatmaps; IBD's CAM against Grad-CAM,
which are equal, up to IBD's constant reference term, for its global-average-pooled linear
head); other peers compute another quantity
and are only timed. Per method at the largest batch it also reports the share of explain's time
spent inside the model's forward (hooks on the model, same calls; ``--profile`` adds the operator
table of torch.profiler) and the peak resident memory one explain call adds in a fresh process
(torch: model + saved explainer; onnxruntime: the export). Tools that cannot be imported are
skipped with the import error.
Run: ``python -m bench.pipeline [--quick] [--methods ibd mace] [--batches 1 16 64]``; results in
``bench/results/pipeline.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bench import _page
from bench._suite import OURS, Calls, Kernel, run_kernel
from pyconcepts.data import ConceptWorld
from pyconcepts.explainers.base import ConceptExplainer
from pyconcepts.explanation import Explanation
from pyconcepts.models import load
from pyconcepts.models.features import FeatureExtractor, parse_layer
from pyconcepts.persistence import atomic_write_bytes
from pyconcepts.serve import decode_image

RESULTS = Path(__file__).resolve().parent / "results"
FORWARD, ONNX, HTTP = "model forward", "onnxruntime", "HTTP service"
GRADCAM, TCAV, PGC, TWIN = (
    "captum LayerGradCam",
    "captum TCAV",
    "pytorch-grad-cam GradCAM",
    "plain torch",
)
ATOL = 1e-3


def explainers(world: ConceptWorld, quick: bool) -> dict[str, Callable[[], ConceptExplainer]]:
    """Method → a function fitting it on trained zoo models: each method's default head sizes
    (every class, default concept counts and layer widths), fits shortened (epochs, occluder
    steps, fit images) since their length does not change the cost of explaining; ``quick``:
    the small test configurations of :func:`pyconcepts.testing.quick_explainers`."""
    from pyconcepts.explainers import IBD, MACE, SRAE, AfI, FilterPatterns
    from pyconcepts.testing import quick_explainers

    vgg, resnet = load("cw-vgg").eval(), load("cw-resnet").eval()
    if quick:
        cases = quick_explainers(world, vgg, resnet)
        return {m: (lambda c=c: c[0]().fit(c[1], **c[2])) for m, c in cases.items()}
    pair = world.tensors()
    return {
        "mace": lambda: MACE(vgg, epochs=1).fit(pair, progress=False),
        "srae": lambda: SRAE(vgg, epochs=2).fit(pair, progress=False),
        "afi": lambda: AfI(vgg, max_iter=2, impression_steps=2, n_probe=8,
                           max_images=200).fit(world, progress=False),
        "pattern_mining": lambda: FilterPatterns(vgg, "features.relu4", n_candidates=16,
                                                 n_patches=2).fit((pair[0][:64], pair[1][:64])),
        "ibd": lambda: IBD(resnet, steps=10, mining_rounds=1, max_images=256).fit(world),
    }  # fmt: skip


def explained_layer(explainer: ConceptExplainer, example: torch.Tensor) -> str:
    """The spatial layer whose activations the method's maps come from (for SRAE, whose layer
    is a vector: the model's last feature map)."""
    from pyconcepts.models.layers import discover_layers

    state = vars(explainer)
    layer = str(state.get("heatmap_layer_") or state.get("layer_"))
    if _acts_and_logits(explainer.model, layer, example)[0].dim() == 4:
        return layer
    return discover_layers(explainer.model, example).feature_map


# ---- plain-torch twins of the explain steps ------------------------------------------------
def _layers_and_logits(
    model: nn.Module, layers: list[str], images: torch.Tensor
) -> tuple[dict[str, Any], Any]:
    """Activations of ``layers`` (by the names given) and the logits, from one forward pass."""
    with torch.no_grad():
        fx = FeatureExtractor(model, layers)
        feats, logits = fx(images, return_output=True)  # type: ignore[misc]
    return {n: feats[k].float() for n, k in zip(layers, fx.names)}, logits


def _acts_and_logits(model: nn.Module, layer: str, images: torch.Tensor) -> tuple[Any, Any]:
    feats, logits = _layers_and_logits(model, [layer], images)
    return feats[layer], logits


def _pick(all_maps: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Per image, its ``columns`` of full-size ``all_maps [B, N, H, W]`` (−1: zero map)."""
    rows = [
        torch.stack([m[c] if c >= 0 else torch.zeros_like(m[0]) for c in cols.tolist()])
        for m, cols in zip(all_maps, columns)
    ]
    return torch.stack(rows)


def _up(maps: torch.Tensor, size: Any) -> torch.Tensor:
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def plain_torch(explainer: ConceptExplainer) -> Optional[Callable[[torch.Tensor], Any]]:
    """The method's explain step written directly in torch, from the fitted state: the model's
    forward with a hook, every map of every class at input size, then each image's target's
    picked in a loop. Returns ``(concept_scores, heatmaps)``; None where there is no such twin
    (SRAE's heatmaps come from excitation backprop, whose only implementation is ours)."""
    method, model, e = explainer.method, explainer.model, vars(explainer)
    if method == "srae":
        return None

    def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = images.shape[-2:]
        if method == "afi":
            fused = e["heatmap_fusion"] == "agreement"
            extra = e["fusion_layers_"] if fused else []
            layers = list(dict.fromkeys([e["heatmap_layer_"], *extra]))
            feats, logits = _layers_and_logits(model, layers, images)  # one forward pass
            t = logits.argmax(1)
            row = torch.tensor([e["classes_"].index(c) if c in e["classes_"] else -1
                                for c in t.tolist()])  # fmt: skip
            class_maps = {}
            for layer in layers:
                weights = e["cis_"][layer].float()
                every = _up(F.conv2d(feats[layer], weights[:, :, None, None]), size)  # [B,K,H,W]
                if e["heatmap_weights"] == "contrast" and every.shape[1] > 1:
                    every = every - every.mean(1, keepdim=True)  # less the fitted classes' mean
                class_maps[layer] = _pick(every, row[:, None])[:, 0].clamp_min(0)
            maps = class_maps[e["heatmap_layer_"]]
            if fused:  # weighted by the layers' maps, each scaled to a maximum of 1
                scaled = [class_maps[n] / class_maps[n].amax((1, 2), keepdim=True).clamp_min(1e-12)
                          for n in e["fusion_layers_"]]  # fmt: skip
                maps = maps * sum(scaled) / len(scaled)
            return explainer._importance_table().float()[t], maps  # type: ignore[attr-defined]
        if method == "pattern_mining":
            acts, logits = _acts_and_logits(model, e["layer_"], images)
            acts = acts / e["filter_scale_"][None, :, None, None]
            rules = e["rule_matrix_"]
            offset = e["filter_mean_"] / e["filter_scale_"]  # each filter's fit-time mean
            if e["map_reference"] == "zero":
                offset = torch.zeros_like(offset)
            shown = torch.relu(acts - offset[None, :, None, None])
            every = _up(torch.einsum("rk,bkhw->brhw", rules, shown), size).clamp_min(0)
            t = logits.argmax(1).tolist()
            own = [[j for j, r in enumerate(e["rules_"]) if r.class_id == c] for c in t]
            width = max(1, *(len(o) for o in own), explainer.top_rules)  # type: ignore[attr-defined]
            columns = torch.tensor([o + [-1] * (width - len(o)) for o in own])
            peak = acts.amax((2, 3)) @ rules.t()
            mask = torch.zeros_like(peak)
            for i, o in enumerate(own):
                mask[i, o] = 1
            return peak * mask, _pick(every, columns)
        if method == "mace":
            head, classes = e["head_"], e["classes_"]
            acts, logits = _acts_and_logits(model, e["layer_"], images)
            with torch.no_grad():
                all_maps = torch.relu(F.conv2d(acts, head.map_weight[:, :, None, None],
                                               head.map_bias))  # fmt: skip
                b = all_maps.shape[0]
                rel = []
                for k in range(head.k):  # each class's embedding network
                    h = all_maps[:, k * head.c : (k + 1) * head.c].flatten(2)
                    for w, bias in zip(head.emb_weights, head.emb_biases):
                        h = torch.tanh(h @ w[k] + bias[k])
                    rel.append((h * head.rel_weight[k]).sum(-1) * head.active[k])
                # each map measured from its fit-time mean (0 with map_reference="zero")
                reference = head.map_reference.flatten()[None, :, None, None]
                every = _up(torch.relu(all_maps - reference), size)
            t = logits.argmax(1).tolist()
            scores = torch.zeros(b, head.k * head.c)
            columns = torch.full((b, head.c), -1)
            for i, c in enumerate(t):
                if c in classes:
                    k = classes.index(c)
                    scores[i, k * head.c : (k + 1) * head.c] = rel[k][i] - head.rel_reference[k]
                    kept = head.active[k] > 0
                    columns[i] = torch.where(kept, torch.arange(head.c) + k * head.c, -1)
            return scores, _pick(every, columns)
        if method == "ibd":
            acts, logits = _acts_and_logits(model, e["layer_"], images)
            acts = acts - e["feature_mean_"][:, None, None]  # measured from the reference feature
            t = logits.argmax(1)
            q, idx, coef = e["concept_vectors_"], e["basis_indices_"][t], e["basis_coefs_"][t]
            scores = torch.zeros(len(t), q.shape[0])
            maps = []
            for i in range(len(t)):  # each image's basis terms
                term_maps = coef[i][:, None, None] * torch.einsum("td,dhw->thw", q[idx[i]], acts[i])
                maps.append(_up(term_maps[None], size)[0].clamp_min(0))
                peak = e["concept_score"] == "peak"  # the maps' maxima, else their means
                pooled = term_maps.amax((1, 2)) if peak else term_maps.mean((1, 2))
                scores[i].index_add_(0, idx[i], pooled)
            return scores, torch.stack(maps)
        raise ValueError(f"method: no plain-torch twin for {method!r}")

    return run


# ---- peers ---------------------------------------------------------------------------------
def captum_gradcam(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Captum's LayerGradCam of each image's predicted class at ``layer``, bilinear to the
    input size, without the final ReLU (so that IBD's CAM can be compared with it)."""
    from captum.attr import LayerAttribution, LayerGradCam

    gradcam = LayerGradCam(model, parse_layer(model, layer).module)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = model(images).argmax(1)
        attr = gradcam.attribute(images, target=target, relu_attributions=False)
        return LayerAttribution.interpolate(attr, tuple(images.shape[-2:]), "bilinear")[:, 0]

    return run


def captum_tcav(
    model: nn.Module, layer: str, world: ConceptWorld, folder: Path
) -> Callable[[torch.Tensor], Any]:
    """Captum's TCAV scores of two concepts (images of two concept-world classes) against
    random images at ``layer``, for each image's predicted class; the CAVs are trained here,
    before any timed call."""
    from captum.concept import TCAV, Concept
    from torch.utils.data import DataLoader

    x, y = world.tensors()
    sets = [x[y == 0][:20], x[y == 1][:20], x[-20:]]
    concepts = [
        Concept(i, f"set{i}", DataLoader(list(s), batch_size=20)) for i, s in enumerate(sets)
    ]
    module = parse_layer(model, layer).module
    name = next(n for n, m in model.named_modules() if m is module)
    tcav = TCAV(model, layers=[name], save_path=str(folder))
    experiment = [[concepts[0], concepts[2]], [concepts[1], concepts[2]]]

    def run(images: torch.Tensor) -> Any:
        with torch.no_grad():
            target = int(model(images[:1]).argmax(1))
        return tcav.interpret(images, experimental_sets=experiment, target=target)

    run(x[:2])  # trains and caches the CAVs
    return run


def pytorch_grad_cam(model: nn.Module, layer: str) -> Callable[[torch.Tensor], Any]:
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=model, target_layers=[parse_layer(model, layer).module])
    return lambda images: cam(input_tensor=images)


# ---- HTTP ----------------------------------------------------------------------------------
def png_bytes(images: torch.Tensor) -> list[bytes]:
    out = []
    for image in images:
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


class Service:
    """The HTTP service of one ONNX export in a thread of this process, and a pool of
    keep-alive clients that post a batch of PNGs at once."""

    def __init__(self, served: Any) -> None:
        from pyconcepts.serve import build_server

        self.server = build_server(served, "127.0.0.1", 0, quiet=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.server.server_address[1]
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(self.server.limits.max_concurrency)  # more get 503

    def _post(self, body: bytes) -> dict[str, Any]:
        if not hasattr(self.local, "conn"):
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        self.local.conn.request("POST", "/explain", body, {"Content-Type": "image/png"})
        response = self.local.conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {answer}")
        return dict(answer)

    def explain(self, bodies: list[bytes]) -> list[dict[str, Any]]:
        return list(self.pool.map(self._post, bodies))

    def close(self) -> None:
        self.pool.shutdown()
        self.server.shutdown()
        self.server.server_close()


# ---- agreement -----------------------------------------------------------------------------
def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=ATOL, rtol=1e-3))


def _same_explanation(ours: Explanation, theirs: Explanation) -> bool:
    mine, other = ours.tensors(), theirs.tensors()
    return sorted(mine) == sorted(other) and all(_close(mine[k], other[k]) for k in mine)


# ---- one method ----------------------------------------------------------------------------
@contextmanager
def forward_clock(model: nn.Module) -> Iterator[list[float]]:
    """Seconds spent inside ``model``'s top-level forward calls while active."""
    spent, started = [0.0], [0.0]

    def pre(*_: Any) -> None:
        started[0] = time.perf_counter()

    def post(*_: Any) -> None:
        spent[0] += time.perf_counter() - started[0]

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        yield spent
    finally:
        for h in handles:
            h.remove()


def forward_share(explainer: ConceptExplainer, images: torch.Tensor, repeats: int) -> float:
    """The fraction of ``explain``'s wall time spent in the model's forward (summed over
    ``repeats`` calls)."""
    explainer.explain(images)
    with forward_clock(explainer.model) as spent:
        start = time.perf_counter()
        for _ in range(repeats):
            explainer.explain(images)
        total = time.perf_counter() - start
    return spent[0] / total


def op_profile(explainer: ConceptExplainer, images: torch.Tensor, repeats: int) -> str:
    """torch.profiler's table of the operators of ``repeats`` explain calls, by self CPU time
    (the model's convolutions, pooling and norms next to the explain step's own)."""
    from torch.profiler import profile

    explainer.explain(images)
    with profile() as prof:
        for _ in range(repeats):
            explainer.explain(images)
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def method_kernel(
    method: str,
    explainer: ConceptExplainer,
    world: ConceptWorld,
    folder: Path,
    http: bool,
    skipped: dict[str, str],
) -> tuple[Kernel, Callable[[], None], Any]:
    """The kernel of :func:`bench._suite.run_kernel` timing ``method`` at a batch size, a
    function releasing the service, and the onnxruntime explainer (None when not exported)."""
    from pyconcepts.export import OnnxExplainer

    model, layer = explainer.model, explained_layer(explainer, world.image(slice(0, 1)))
    served: Optional[Any] = None
    try:
        served = OnnxExplainer(explainer.export_onnx(folder / f"{method}.onnx"))
    except NotImplementedError as exc:
        skipped[ONNX] = skipped[HTTP] = str(exc).splitlines()[0]
    service = Service(served) if served is not None and http else None
    if served is not None and not http:
        skipped[HTTP] = "--no-http"
    peers: dict[str, Callable[[torch.Tensor], Any]] = {}
    makers = {
        GRADCAM: lambda: captum_gradcam(model, layer),
        TCAV: lambda: captum_tcav(model, layer, world, folder / "cav"),
        PGC: lambda: pytorch_grad_cam(model, layer),
    }
    for name, make in makers.items():
        try:
            peers[name] = make()
        except ImportError as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
    twin = plain_torch(explainer)
    if twin is None:
        skipped[TWIN] = "no plain-torch twin: SRAE's heatmaps are excitation backprop (c-MWP)"
    else:
        peers[TWIN] = twin

    h, w = _acts_and_logits(model, layer, world.image(slice(0, 1)))[0].shape[-2:]
    served_logits: dict[int, torch.Tensor] = {}  # batch → logits of the PNG-decoded images

    def setup(batch: int) -> tuple[Calls, dict[str, str]]:
        images = world.image(slice(0, batch))
        calls: Calls = {OURS: lambda: explainer.explain(images)}

        def forward() -> Any:
            with torch.no_grad():
                return model(images)

        calls[FORWARD] = forward
        if served is not None:
            calls[ONNX] = lambda: served.explain(images)
        if service is not None:
            bodies = png_bytes(images)
            size = (images.shape[-2], images.shape[-1])
            decoded = torch.cat([torch.as_tensor(decode_image(b, size, 2**24)) for b in bodies])
            served_logits[batch] = served.explain(decoded).logits
            calls[HTTP] = lambda: service.explain(bodies)
        for name, peer in peers.items():
            calls[name] = lambda peer=peer: peer(images)
        return calls, {}

    def agree(impl: str, ours: Explanation, theirs: Any) -> Optional[bool]:
        if impl == ONNX:
            return _same_explanation(ours, theirs)
        if impl == HTTP:  # against the images the service saw: through PNG (8 bits)
            logits = torch.tensor([a["logits"] for a in theirs])
            return _close(logits, served_logits[len(theirs)])
        if impl == TWIN:
            scores, maps = theirs
            want = ours.heatmaps if ours.heatmaps is not None else ours.class_maps
            return _close(scores, ours.concept_scores) and _close(maps, want)
        if impl == GRADCAM and method == "ibd":
            # IBD's CAM is measured from a reference feature: equal up to a constant per image
            gap = theirs * (h * w) - ours.extras["cam"]
            return _close(gap - gap.mean((1, 2), keepdim=True), torch.zeros_like(gap))
        return None

    return (
        Kernel(method, f"{method}: explain a batch", "batch", {}, setup, agree),
        (service.close if service else (lambda: None)),
        served,
    )


_FRESH = """
import sys, torch
from pathlib import Path
from pyconcepts import explainers
from pyconcepts.export import OnnxExplainer
from pyconcepts.models import load

kind, saved, images = sys.argv[1], sys.argv[2], torch.load(sys.argv[3], weights_only=True)
if kind == "torch":
    explainer = getattr(explainers, sys.argv[4]).load(saved, model=load(sys.argv[5]))
else:
    explainer = OnnxExplainer(saved)
status = lambda f: next(int(l.split()[1]) for l in Path("/proc/self/status").read_text()
                        .splitlines() if l.startswith(f + ":"))
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
explainer.explain(images)
print((status("VmHWM") - before) / 1024)
"""


def peak_memory(
    explainer: ConceptExplainer, onnx_path: Optional[Path], images: torch.Tensor, folder: Path
) -> dict[str, float]:
    """Peak resident memory (MiB) that one explain call of ``images`` adds to a fresh process
    holding only the model and the saved explainer (torch) or the export (onnxruntime)."""
    saved = explainer.save(folder / f"{explainer.method}.pcx")
    torch.save(images, folder / "images.pt")
    name = str(explainer.model.zoo_info["name"])  # type: ignore[index]
    runs = {"torch": [saved, type(explainer).__name__, name]}
    if onnx_path is not None:
        runs["onnx"] = [onnx_path]
    memory = {}
    for kind, extra in runs.items():
        argv = [kind, str(extra[0]), str(folder / "images.pt"), *map(str, extra[1:])]
        run = subprocess.run(
            [sys.executable, "-c", _FRESH, *argv], capture_output=True, text=True, check=True
        )
        memory[kind] = float(run.stdout.strip().splitlines()[-1])
    return memory


def summary(results: dict[str, Any], batch: int) -> str:
    """One row per method at ``batch``: throughput, the explain step's overhead over the
    forward, the forward's share inside explain, serving and peers as ratios, peak memory."""
    head = ["method", "explain img/s", "forward img/s", "overhead", "forward share",
            "ONNX / torch", "HTTP img/s", f"{GRADCAM} / ours", f"{TCAV} / ours",
            f"{TWIN} / ours", "peak MiB torch / ONNX"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method, r in results.items():
        s = {row["impl"]: row["seconds"] for row in r["rows"] if row["size"] == batch}
        agrees = {row["impl"]: row["agrees"] for row in r["rows"] if row["size"] == batch}
        ours = s[OURS]
        ratio = {
            impl: f"{s[impl] / ours:.2f}×" + ("" if agrees[impl] else " (not compared)")
            for impl in s
        }

        onnx = f"{ours / s[ONNX]:.2f}×" if ONNX in s else "–"
        http = f"{batch / s[HTTP]:.0f}" if HTTP in s else "–"
        memory = r["peak_mib"]
        cells = [
            method, f"{batch / ours:.0f}", f"{batch / s[FORWARD]:.0f}",
            f"{ours / s[FORWARD] - 1:+.0%}", f"{r['forward_share']:.0%}", onnx, http,
            ratio.get(GRADCAM, "–"), ratio.get(TCAV, "–"), ratio.get(TWIN, "–"),
            f"{memory['torch']:.1f} / " + (f"{memory['onnx']:.1f}" if "onnx" in memory else "–"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def throughput(results: dict[str, Any]) -> str:
    """Images per second of every path and tool, one row per method and batch size."""
    impls = list(dict.fromkeys(r["impl"] for res in results.values() for r in res["rows"]))
    lines = ["| method | batch | " + " | ".join(impls) + " |", "|---|---:|" + "---:|" * len(impls)]
    for method, res in results.items():
        for batch in dict.fromkeys(r["size"] for r in res["rows"]):
            s = {r["impl"]: r["seconds"] for r in res["rows"] if r["size"] == batch}
            cells = [f"{batch / s[i]:,.0f}" if i in s else "–" for i in impls]
            lines.append(f"| {method} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per batch")
    parser.add_argument("--quick", action="store_true", help="small configurations (a smoke run)")
    parser.add_argument("--no-http", action="store_true", help="leave the HTTP service out")
    parser.add_argument(
        "--profile", action="store_true", help="also print torch.profiler's operator table"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and .md")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore")  # empty-heatmap and export warnings would flood the log
    torch.manual_seed(0)
    info, load_start = _page.machine(), os.getloadavg()
    world = ConceptWorld(max(512, *args.batches), seed=3)
    fits = explainers(world, args.quick)
    results: dict[str, Any] = {}
    parts = []
    largest = max(args.batches)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods or list(fits):
            print(f"## {method}", flush=True)
            explainer = fits[method]()
            skipped: dict[str, str] = {}
            kernel, close, served = method_kernel(
                method, explainer, world, Path(tmp), not args.no_http, skipped
            )
            try:
                result = run_kernel(kernel, args.batches, args.repeats, print)
            finally:
                close()
            result["skipped"].update(skipped)
            images = world.image(slice(0, largest))
            result["forward_share"] = forward_share(explainer, images, args.repeats)
            if args.profile:
                result["profile"] = op_profile(explainer, images, args.repeats)
                print(result["profile"])
            onnx_path = None if served is None else Path(tmp) / f"{method}.onnx"
            result["peak_mib"] = peak_memory(explainer, onnx_path, images, Path(tmp))
            results[method] = result
            parts.append(f"### {method}\n\n{_page.table(kernel, result)}\n")
    load = (load_start[0], os.getloadavg()[0])
    header = (
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, torch "
        f"{info['torch']} with {info['torch_threads']} threads); load average (1 min) "
        f"{load[0]:.2f} at the start, {load[1]:.2f} at the end. Configurations: "
        f"{'quick' if args.quick else 'default head sizes'}; batches {args.batches}, best of "
        f"{args.repeats} interleaved rounds."
    )
    per_method = (
        f"Images per second:\n\n{throughput(results)}\n\n"
        "Per method (time per batch; `X / ours`: X's time over ours):"
    )
    text = "\n\n".join(
        [header, f"At batch {largest}:", summary(results, largest), per_method, *parts]
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "load_average": load, "quick": args.quick, "methods": results}
    text_json = json.dumps(doc, indent=2, default=str)
    atomic_write_bytes(args.out / "pipeline.json", text_json.encode())
    atomic_write_bytes(args.out / "pipeline.md", (text + "\n").encode())
    return doc


if __name__ == "__main__":
    main()
