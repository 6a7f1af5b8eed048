"""Command line: ``pyconcepts demo | explain | export | serve | backends | zoo``. Every command
has ``--help``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional


def _demo(args: argparse.Namespace) -> int:
    from pyconcepts.demo import STEPS, run_demo

    steps = tuple(s.strip() for s in args.only.split(",")) if args.only else STEPS
    out = Path(args.out)
    results = run_demo(out, steps, progress=not args.no_progress)
    failed = [name for name, r in results.items() if r["status"] != "ok"]
    print(f"\nResults under {out.resolve()}: summary.json and one folder per step.")
    if failed:
        print(f"Failed steps: {failed} (see <out>/<step>/error.txt)", file=sys.stderr)
        return 1
    return 0


def _backends(_args: argparse.Namespace) -> int:
    from pyconcepts import backends

    for name, status in backends().items():
        print(f"{name:10s} {status}")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from pyconcepts.models import zoo

    names = [args.name] if args.name else zoo.available()
    for name in names:
        if args.train or args.retrain:
            zoo.load(name, retrain=args.retrain)
        info = zoo.info(name)
        status = "not trained" if info is None else f"test accuracy {info['test_accuracy']:.4f}"
        print(f"{name:10s} {zoo.ZOO[name].description} — {status}")
    print(f"cache: {zoo.cache_dir()}")
    if args.json:
        print(json.dumps({n: zoo.info(n) for n in names}, indent=2))
    return 0


_METHODS = {
    # method -> (explainer class name, default zoo model, fit data: "world" or "pair")
    "mace": ("MACE", "cw-vgg", "pair"),
    "srae": ("SRAE", "cw-vgg", "pair"),
    "afi": ("AfI", "cw-vgg", "world"),
    "pattern_mining": ("FilterPatterns", "cw-vgg", "pair"),
    "ibd": ("IBD", "cw-resnet", "world"),
}


def _explainer_class(method: str) -> Any:
    import pyconcepts.explainers as explainers

    return getattr(explainers, _METHODS[method][0])


def _fit(args: argparse.Namespace) -> Any:
    """Fit ``args.method`` on the concept world with a zoo model; returns (explainer, model)."""
    from pyconcepts.data import ConceptWorld
    from pyconcepts.models import load

    _, default_model, data_kind = _METHODS[args.method]
    model = load(args.model or default_model)
    world = ConceptWorld(args.n_fit, seed=args.seed)
    data = world if data_kind == "world" else world.tensors()
    options = json.loads(args.options) if args.options else {}
    explainer = _explainer_class(args.method)(model, **options)
    print(f"fitting {explainer!r} on {args.n_fit} concept-world images ...")
    return explainer.fit(data), model


def _fit_or_load(args: argparse.Namespace) -> Any:
    """The explainer of ``args.method``: loaded from ``args.explainer`` (on its zoo model), or
    fitted with :func:`_fit`."""
    from pyconcepts.models import load

    if args.method not in _METHODS:
        raise SystemExit(f"--method: expected one of {sorted(_METHODS)}, got {args.method!r}")
    if args.explainer:
        model = load(args.model or _METHODS[args.method][1])
        return _explainer_class(args.method).load(args.explainer, model=model)
    return _fit(args)[0]


def _load_images(args: argparse.Namespace, size: tuple[int, int]) -> Any:
    """Images from a folder (PNG/JPEG, resized to the explainer's input) or the concept world."""
    import numpy as np
    import torch
    from PIL import Image

    if args.images:
        files = sorted(
            p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
        )
        if not files:
            raise SystemExit(f"--images: no .png/.jpg files in {args.images}")
        arrays = [
            np.asarray(Image.open(f).convert("RGB").resize((size[1], size[0]))) for f in files
        ]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    from pyconcepts.data import ConceptWorld

    return ConceptWorld(args.n_images, seed=args.seed + 1).image(slice(None))


def _explain(args: argparse.Namespace) -> int:
    explainer = _fit_or_load(args)
    if args.save and not args.explainer:
        print(f"saved the fitted explainer to {explainer.save(args.save)}")
    images = _load_images(args, tuple(explainer.input_size_))
    result = explainer.explain(images)
    folder = result.save(args.out, pngs=min(len(images), args.pngs))
    if args.onnx:
        print(f"exported ONNX graph to {explainer.export_onnx(Path(args.out) / 'explainer.onnx')}")
    for i in range(min(3, len(result))):
        top = ", ".join(f"{n} {v:.3g}" for n, v in result.top_concepts(i, 3))
        print(f"image {i}: {result.class_names[int(result.targets[i])]} <- {top}")
    print(f"explanations of {len(result)} images under {folder.resolve()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    explainer = _fit_or_load(args)
    path = explainer.export_onnx(args.out)
    print(f"wrote the {args.method} ONNX export to {Path(path).resolve()}")
    print(f"outputs: {', '.join(explainer.onnx_outputs)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pyconcepts.serve import cli_limits, serve

    try:
        limits = cli_limits(args.port, args.max_body_mib, args.max_concurrency, args.timeout)
    except ValueError as exc:  # a usage error, like argparse's own: one line, exit status 2
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    try:
        serve(args.model, args.host, args.port, limits, quiet=args.quiet)
    except (ValueError, OSError) as exc:  # not an export, port taken
        raise SystemExit(f"serve: {exc}") from exc
    return 0


def _add_explainer_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that choose, fit or load an explainer (shared by explain and export)."""
    parser.add_argument("--method", required=True, choices=sorted(_METHODS))
    parser.add_argument("--explainer", help="a saved explainer file (skips fitting)")
    parser.add_argument("--model", help="zoo model (default: the method's usual one)")
    parser.add_argument("--n-fit", type=int, default=1000, help="concept-world images to fit on")
    parser.add_argument("--options", help="constructor options as JSON, e.g. '{\"n_concepts\": 5}'")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyconcepts", description="Concept-based explanations of CNN image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run every explainer on the concept world")
    demo.add_argument(
        "--out", default="pyconcepts-demo", help="output folder (default: %(default)s)"
    )
    demo.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_demo)

    ex = sub.add_parser(
        "explain",
        help="fit (or load) an explainer and explain images",
        description="Fit an explainer on the concept world with a zoo model (or load a saved "
        "one with --explainer), explain images from a folder or the concept world, and write "
        "the explanations (tensors, manifest, plots) under --out.",
    )
    _add_explainer_arguments(ex)
    ex.add_argument("--images", help="folder of .png/.jpg images (default: concept-world images)")
    ex.add_argument("--n-images", type=int, default=8, help="concept-world images to explain")
    ex.add_argument("--save", help="also save the fitted explainer to this file")
    ex.add_argument("--onnx", action="store_true", help="also export explainer.onnx")
    ex.add_argument("--pngs", type=int, default=4, help="plots to write (default: %(default)s)")
    ex.add_argument("--out", default="pyconcepts-explanations", help="output folder")
    ex.set_defaults(func=_explain)

    exp = sub.add_parser(
        "export",
        help="fit (or load) an explainer and write its ONNX export",
        description="Fit an explainer on the concept world with a zoo model (or load a saved "
        "one with --explainer) and export model + explainer as one ONNX graph, loadable with "
        "pyconcepts.export.OnnxExplainer and servable with `pyconcepts serve`.",
    )
    _add_explainer_arguments(exp)
    exp.add_argument("--out", required=True, help="the .onnx file to write")
    exp.set_defaults(func=_export)

    srv = sub.add_parser(
        "serve",
        help="serve an ONNX export over HTTP (/health, /metadata, /explain)",
        description="HTTP inference service for an export of `pyconcepts export`: GET /health, "
        "GET /metadata, POST /explain (PNG/JPEG body or JSON with a base64 image). See "
        "docs/serving.md.",
    )
    srv.add_argument("model", help="the .onnx export to serve")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    srv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    srv.add_argument(
        "--max-body-mib", type=float, default=16, help="largest body (default: %(default)s MiB)"
    )
    srv.add_argument(
        "--max-concurrency",
        type=int,
        default=32,
        help="requests explained at once, more get 503 (default: %(default)s)",
    )
    srv.add_argument(
        "--timeout", type=float, default=30, help="seconds per request read (default: %(default)s)"
    )
    srv.add_argument("--quiet", action="store_true", help="no per-request log lines")
    srv.set_defaults(func=_serve)

    be = sub.add_parser("backends", help="which compiled backends loaded, and why not")
    be.set_defaults(func=_backends)

    zoo = sub.add_parser("zoo", help="list, train or retrain the concept-world models")
    zoo.add_argument("name", nargs="?", help="one model (default: all)")
    zoo.add_argument("--train", action="store_true", help="train the model(s) if not cached")
    zoo.add_argument("--retrain", action="store_true", help="train again, replacing the cache")
    zoo.add_argument("--json", action="store_true", help="also print the cached info as JSON")
    zoo.set_defaults(func=_zoo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
