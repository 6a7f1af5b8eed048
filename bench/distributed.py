"""Dataset explanation on Ray: images/s with 1 and 2 workers, against one process doing the
same work, and how closely DDP fitting matches one process.

The images are concept-world PNGs written to a temporary folder; each explainer is fitted in
its small configuration (``pyconcepts.testing.quick_explainers``: seeded zoo architectures, the
same graphs as the trained models). ``one process`` decodes and explains the images in shards
and batches exactly as a worker does, with one torch thread and without writing. A Ray run is
:func:`pyconcepts.distributed.explain_dataset` into a fresh folder, timed end to end (actor
start, explainer load, decoding, explaining, zstd parquet writes). The DDP rows give the largest
difference between single-process and 2-worker DDP fits of IBD's concept classifiers.
``images/s`` is end to end; ``per worker`` divides the images by the summed busy time of the
workers (start-up excluded). Run: ``python -m bench.distributed [--images 8192] [--workers 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from bench import _results
from pyconcepts.data import ConceptWorld
from pyconcepts.data.images import decode_image, image_files, to_batch
from pyconcepts.models import cw_resnet, cw_vgg
from pyconcepts.testing import quick_explainers


def _write_images(folder: Path, n: int) -> None:
    world = ConceptWorld(n, seed=21)
    for start in range(0, n, 256):
        for i, x in enumerate(world.image(slice(start, min(n, start + 256)))):
            pixels = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{start + i:07d}.png")


def _one_process(explainer: Any, folder: Path, shard: int, batch: int) -> float:
    """Images/s of one process doing a worker's work (decode + explain), one torch thread."""
    files = image_files(folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for s in range(0, len(files), shard):
            for lo in range(s, min(s + shard, len(files)), batch):
                chunk = files[lo : min(lo + batch, s + shard, len(files))]
                explainer.explain(to_batch([decode_image(f, (64, 64)) for f in chunk]))
        return len(files) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def _ddp_differences() -> dict[str, float]:
    from pyconcepts.distributed import ddp_concept_trainer
    from pyconcepts.explainers import IBD
    from pyconcepts.explainers.ibd import ConceptTraining, train_concept_classifiers
    from pyconcepts.models import load

    gen = torch.Generator().manual_seed(1)
    X = torch.randn(901, 16, generator=gen).relu()
    Y = torch.rand(901, 5, generator=gen) < torch.tensor([0.02, 0.05, 0.1, 0.2, 0.01])
    settings = ConceptTraining(5, 2, 0.5, 20, 0.05, 1e-4)
    state = torch.Generator().manual_seed(7).get_state()
    one = train_concept_classifiers(X, Y, torch.Generator().set_state(state), settings)
    two = ddp_concept_trainer(2)(X, Y, torch.Generator().set_state(state), settings)
    world = ConceptWorld(300, seed=7)
    options = {"steps": 10, "mining_rounds": 1, "max_images": 96}
    a = IBD(load("cw-resnet", progress=False), **options).fit(world)
    b = IBD(load("cw-resnet", progress=False), **options).fit(world, trainer=ddp_concept_trainer(2))
    return {
        "synthetic_W": float((one[0] - two[0]).abs().max()),
        "synthetic_b": float((one[1] - two[1]).abs().max()),
        "ibd_cw_resnet_concept_weights": float(
            (a.concept_weights_ - b.concept_weights_).abs().max()
        ),
        "ibd_cw_resnet_basis_coefs": float((a.basis_coefs_ - b.basis_coefs_).abs().max()),
        "ibd_cw_resnet_same_bases": bool(torch.equal(a.basis_indices_, b.basis_indices_)),
    }


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    import ray

    from pyconcepts.distributed import explain_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["ibd", "mace"])
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cases = quick_explainers(ConceptWorld(64, seed=5), cw_vgg().eval(), cw_resnet().eval())
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "images"
            folder.mkdir()
            _write_images(folder, args.images)
            for method in args.methods:
                make, data, kw = cases[method]
                explainer = make().fit(data, **kw)
                onnx = explainer.export_onnx(Path(tmp) / f"{method}.onnx")
                for path, given in (("torch", explainer), ("onnxruntime", onnx)):
                    if path == "torch":
                        speed = _one_process(explainer, folder, args.shard_size, args.batch_size)
                        rows.append({"method": method, "path": path, "workers": "one process",
                                     "images_per_s": speed})  # fmt: skip
                    for w in args.workers:
                        out = Path(tmp) / f"out-{method}-{path}-{w}"
                        run = explain_dataset(given, folder, out, num_workers=w,
                                              shard_size=args.shard_size,
                                              batch_size=args.batch_size)  # fmt: skip
                        size = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
                        rows.append({"method": method, "path": path, "workers": w,
                                     "images_per_s": run.images_per_second,
                                     "per_worker": run.images_per_worker_second,
                                     "seconds": run.seconds,
                                     "bytes_per_image": size / run.n_images})  # fmt: skip
        ddp = _ddp_differences()
    finally:
        ray.shutdown()
    doc = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"ray {ray.__version__}",
        "load_average_at_end": os.getloadavg(),
        "images": args.images,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "rows": rows,
        "ddp_max_abs_difference": ddp,
    }
    print("| method | path | workers | images/s | per worker | seconds | bytes/image |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        extra = (
            f"{r['per_worker']:.1f} | {r['seconds']:.1f} | {r['bytes_per_image']:.0f}"
            if "seconds" in r
            else "– | – | –"
        )
        speed = f"{r['images_per_s']:.1f}"
        print(f"| {r['method']} | {r['path']} | {r['workers']} | {speed} | {extra} |")
    print(json.dumps(ddp, indent=1))
    _results.save("distributed", doc)
    return doc


if __name__ == "__main__":
    main()
