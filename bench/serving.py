"""Serving: images/s explained by torch eager vs onnxruntime for every explainer.

Each explainer is fitted in its small configuration (``pyconcepts.testing.quick_explainers``,
seeded untrained zoo architectures — the graph's cost does not depend on the weights), exported
with ``export_onnx`` and loaded with ``pyconcepts.export.OnnxExplainer`` (CPU provider, or CUDA
when onnxruntime-gpu sees a GPU). Before timing, the ONNX outputs are checked against torch
(concept scores, logits, heatmaps within ``--atol``). Median of ``--repeats`` runs per batch.
Run: ``python -m bench.serving [--batches 1 32 256] [--methods mace ibd] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from bench import _results
from bench._timing import median_seconds
from pyconcepts.data import ConceptWorld
from pyconcepts.export import OnnxExplainer
from pyconcepts.models import cw_resnet, cw_vgg
from pyconcepts.testing import quick_explainers


def _agree(a: Optional[torch.Tensor], b: Optional[torch.Tensor], atol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-3))


def _limit_threads(served: OnnxExplainer, path: Path, threads: int) -> None:
    """Recreate the onnxruntime session with ``threads`` intra-op threads (same providers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    providers = served.session.get_providers()
    served.session = ort.InferenceSession(str(path), options, providers=providers)


def main(argv: Optional[list[str]] = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--atol", type=float, default=1e-3)
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads of torch and onnxruntime"
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    world = ConceptWorld(max(64, max(args.batches)), seed=3)
    cases = quick_explainers(world, cw_vgg().eval(), cw_resnet().eval())
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods or list(cases):
            make, data, fit_kwargs = cases[method]
            explainer = make().fit(data, **fit_kwargs)
            served = OnnxExplainer(explainer.export_onnx(Path(tmp) / f"{method}.onnx"))
            if args.threads:
                _limit_threads(served, Path(tmp) / f"{method}.onnx", args.threads)
            for batch in args.batches:
                images = world.image(slice(0, batch))
                want, got = explainer.explain(images), served.explain(images)
                agree = all(
                    _agree(x, y, args.atol)
                    for x, y in [
                        (want.concept_scores, got.concept_scores),
                        (want.logits, got.logits),
                        (want.heatmaps, got.heatmaps),
                    ]
                )
                if not agree:
                    raise SystemExit(f"{method}: onnxruntime disagrees with torch at batch {batch}")
                explainer.explain(images)  # warm-up (allocations)
                t_torch = median_seconds(partial(explainer.explain, images), args.repeats)
                served.explain(images)  # warm-up (onnxruntime graph optimisation)
                t_onnx = median_seconds(partial(served.explain, images), args.repeats)
                rows.append(
                    {
                        "method": method,
                        "batch": batch,
                        "torch_images_per_s": batch / t_torch,
                        "onnx_images_per_s": batch / t_onnx,
                        "onnx_over_torch": t_torch / t_onnx,
                        "providers": served.session.get_providers(),
                        "threads": torch.get_num_threads(),
                    }
                )
    print("| method | batch | torch img/s | onnxruntime img/s | onnx / torch |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['batch']} | {r['torch_images_per_s']:.1f} | "
            f"{r['onnx_images_per_s']:.1f} | {r['onnx_over_torch']:.2f}× |"
        )
    _results.save("serving", rows)
    return rows


if __name__ == "__main__":
    main()
