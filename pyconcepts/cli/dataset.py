"""``pyconcepts explain-dataset``: a folder or parquet data set explained on Ray into resumable
parquet shards (:func:`pyconcepts.distributed.explain_dataset`; needs the ``[distributed]``
extra)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pyconcepts.cli._common import OK, UsageError, add_json, positive_int, print_json, say
from pyconcepts.cli.fitdata import pair
from pyconcepts.cli.models import add_model_options, load_model, preprocessing


def add_parser(sub: Any, common: list[argparse.ArgumentParser]) -> None:
    from pyconcepts.cli.commands import METHODS

    p = sub.add_parser(
        "explain-dataset",
        parents=common,
        help="explain a folder or parquet data set on Ray into resumable parquet shards",
        description="Explain every image of SOURCE (a folder of .png/.jpg images, searched "
        "recursively, or parquet files with encoded images) with an ONNX export (--onnx) or a "
        "saved explainer (--explainer with --method), on a Ray actor pool, writing one parquet "
        "file per shard under --out. Running it again on the same --out resumes: written "
        "shards are skipped.",
    )
    p.add_argument("source", help="a folder of images, a .parquet file or a folder of them")
    p.add_argument("--out", required=True, help="the output folder of shards")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--onnx", help="an ONNX export (`pyconcepts export`)")
    which.add_argument("--explainer", help="a saved explainer file (needs --method)")
    p.add_argument("--method", choices=sorted(METHODS), help="the saved explainer's method")
    add_model_options(p, "with --explainer; default: the method's usual zoo model")
    p.add_argument("--workers", type=positive_int, default=2, help="actors (default: %(default)s)")
    p.add_argument("--cpus-per-worker", type=positive_int, default=1,
                   help="CPUs and threads per actor (default: %(default)s)")  # fmt: skip
    p.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto",
                   help="one GPU per actor (auto: when the cluster has GPUs)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per explain call (default: %(default)s)")  # fmt: skip
    p.add_argument("--shard-size", type=positive_int, default=1024,
                   help="images per output file (default: %(default)s)")  # fmt: skip
    p.add_argument("--image-size", type=pair, help="H,W to resize images to (default: the "
                   "explainer's input size)")  # fmt: skip
    p.add_argument("--heatmap-size", type=pair, help="H,W to pool stored maps to "
                   "(default: input resolution)")  # fmt: skip
    p.add_argument("--float16", action="store_true", help="store maps as float16")
    p.add_argument("--image-column", default="image", help="parquet column of image bytes")
    p.add_argument("--key-column", help="parquet column of image ids (default: file:row)")
    p.add_argument("--address", help="Ray cluster to connect to (default: RAY_ADDRESS, else a "
                   "local one)")  # fmt: skip
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyconcepts.distributed import explain_dataset
    from pyconcepts.distributed._ray import require

    explainer: Any
    if args.onnx:
        if not Path(args.onnx).is_file():
            raise UsageError(f"--onnx {args.onnx}: no such file")
        explainer = args.onnx
        mean, std = preprocessing(None, args.mean, args.std)
    else:
        explainer, mean, std = _load(args)
    ray = require()
    if args.address and not ray.is_initialized():
        ray.init(address=args.address)
    gpu = {"auto": None, "yes": True, "no": False}[args.gpu]
    try:
        result = explain_dataset(
            explainer, args.source, args.out, batch_size=args.batch_size,
            shard_size=args.shard_size, num_workers=args.workers,
            cpus_per_worker=args.cpus_per_worker, use_gpu=gpu, image_size=args.image_size,
            mean=mean, std=std, heatmap_size=args.heatmap_size,
            heatmap_dtype="float16" if args.float16 else "float32",
            image_column=args.image_column, key_column=args.key_column,
            progress=not args.no_progress and not args.json,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:  # a source, out folder or option that does not fit
        raise UsageError(str(exc)) from None
    doc = {
        "out": str(result.out.resolve()),
        "images": result.n_images,
        "shards": result.n_shards,
        "written": result.written,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 2),
    }
    if args.json:
        print_json(args, doc)
        return OK
    say(args, f"{result.n_images} images in {result.n_shards} shards under {doc['out']}: "
              f"{len(result.written)} written now ({doc['images_per_second']} images/s), "
              f"{len(result.skipped)} already there")  # fmt: skip
    return OK


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(explainer loaded from --explainer onto --model, mean, std)."""
    from pyconcepts.cli.commands import METHODS, _explainer_class
    from pyconcepts.errors import LoadError

    if not args.method:
        raise UsageError("--explainer needs --method (the saved explainer's method)")
    model = load_model(args.model or METHODS[args.method][1])
    mean, std = preprocessing(model, args.mean, args.std)
    try:
        return _explainer_class(args.method).load(args.explainer, model=model), mean, std
    except (LoadError, FileNotFoundError) as exc:
        raise UsageError(f"--explainer: {exc}") from None
