"""The commands: ``demo | explain | export | report | evaluate | serve | info | backends | zoo``."""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
from pathlib import Path
from typing import Any

from pyconcepts.cli._common import (
    OK,
    UsageError,
    device_of,
    print_json,
    progress,
    say,
    show_progress,
)
from pyconcepts.cli.fitdata import FIT_OPTIONS, fit_data
from pyconcepts.cli.models import load_model, normalise, preprocessing, read_images

METHODS = {
    # method -> (explainer class name, default zoo model)
    "mace": ("MACE", "cw-vgg"),
    "srae": ("SRAE", "cw-vgg"),
    "afi": ("AfI", "cw-vgg"),
    "pattern_mining": ("FilterPatterns", "cw-vgg"),
    "ibd": ("IBD", "cw-resnet"),
}


def demo(args: argparse.Namespace) -> int:
    from pyconcepts.demo import STEPS, run_demo
    from pyconcepts.report import write_report

    steps = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else STEPS
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise UsageError(f"--only: unknown step(s) {unknown}; expected some of {list(STEPS)}")
    out = Path(args.out)
    results = run_demo(out, steps, progress=show_progress(args), log=lambda s: say(args, s))
    report = write_report(out, title="pyconcepts demo")
    failed = [name for name, r in results.items() if r["status"] != "ok"]
    if args.json:
        print_json(
            args, {"out": str(out.resolve()), "report": str(report.resolve()), "steps": results}
        )
    else:
        print(f"\nResults under {out.resolve()}: summary.json and one folder per step.")
    if failed:
        print(f"Failed steps: {failed} (see <out>/<step>/error.txt)", file=sys.stderr)
    say(args, f"report: {report.resolve()}")
    return 1 if failed else OK


def _explainer_class(method: str) -> Any:
    import pyconcepts.explainers as explainers

    return getattr(explainers, METHODS[method][0])


def _model(args: argparse.Namespace) -> tuple[Any, str, Any, Any]:
    """(model on ``--device``, its name, mean, std) for ``args.method``."""
    name = args.model or METHODS[args.method][1]
    model = load_model(name).to(device_of(args))
    mean, std = preprocessing(model, args.mean, args.std)
    return model, name, mean, std


def _fit_or_load(args: argparse.Namespace) -> tuple[Any, str, Any, Any]:
    """(explainer, model name, mean, std): the explainer loaded from ``--explainer`` or fitted
    on what :mod:`pyconcepts.cli.fitdata` chooses (normalised like the model's inputs)."""
    from pyconcepts.errors import LoadError

    model, name, mean, std = _model(args)
    cls = _explainer_class(args.method)
    if args.explainer:
        given = [f"--{o.replace('_', '-')}" for o in FIT_OPTIONS if getattr(args, o) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: not used with --explainer (it is fitted)")
        try:
            return cls.load(args.explainer, model=model), name, mean, std
        except (LoadError, FileNotFoundError) as exc:
            raise UsageError(f"--explainer: {exc}") from None
    try:
        options = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--options: not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise UsageError("--options: expected a JSON object, e.g. '{\"n_concepts\": 5}'")
    try:
        explainer = cls(model, **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--options: {exc}") from None
    data = fit_data(args, explainer, mean, std, getattr(args, "images", None))
    say(args, f"fitting {explainer!r} on {data.description} ...")
    kwargs = dict(data.kwargs)
    if "progress" in inspect.signature(explainer.fit).parameters:
        kwargs["progress"] = show_progress(args)
    return explainer.fit(*data.args, **kwargs), name, mean, std


def _images(
    args: argparse.Namespace, size: tuple[int, int], mean: Any, std: Any, model: Any
) -> Any:
    """The images to explain at ``size``, normalised for the model: ``--images`` (read as
    the model's preprocessing reads photos) or concept-world ones."""
    if args.images:
        images = read_images(args.images, size, "--images", model)
    else:
        from pyconcepts.data import ConceptWorld

        images = ConceptWorld(args.n_images, image_size=size, seed=args.seed + 1).image(slice(None))
    return normalise(images, mean, std)


def explain_in_batches(explainer: Any, images: Any, args: argparse.Namespace) -> Any:
    """``explainer.explain`` over ``--batch-size`` chunks, joined into one Explanation: tensors
    that differ between chunks are per-image and concatenated, those equal in every chunk
    (a method's constant extras) are kept once."""
    import dataclasses

    import torch

    starts = range(0, len(images), args.batch_size)
    parts = [
        explainer.explain(images[s : s + args.batch_size])
        for s in progress(starts, args, "explaining", total=len(starts))
    ]
    if len(parts) == 1:
        return parts[0]

    def join(values: list[Any]) -> Any:
        if values[0] is None:
            return None
        same = all(v.shape == values[0].shape and torch.equal(v, values[0]) for v in values)
        return values[0] if same else torch.cat(values)

    names = ("concept_scores", "logits", "targets", "heatmaps", "heatmap_concepts", "class_maps")
    fields = {n: join([getattr(p, n) for p in parts]) for n in names if hasattr(parts[0], n)}
    extras = {k: join([p.extras[k] for p in parts]) for k in parts[0].extras}
    return dataclasses.replace(parts[0], **fields, extras=extras)


def explain(args: argparse.Namespace) -> int:
    from pyconcepts.report import save_explanation, write_report

    explainer, model_name, mean, std = _fit_or_load(args)
    if args.save and not args.explainer:
        say(args, f"saved the fitted explainer to {explainer.save(args.save)}")
    images = _images(args, tuple(explainer.input_size_), mean, std, explainer.model)
    result = explain_in_batches(explainer, images, args)
    settings = {"method": args.method, "model": model_name, "config": explainer.get_config()}
    folder = save_explanation(
        args.out, result, images, settings, mean, std, pngs=min(len(images), args.pngs)
    )
    if args.onnx:
        say(args, f"exported ONNX graph to {explainer.export_onnx(folder / 'explainer.onnx')}")
    report = None if args.no_report else write_report(folder, title=f"pyconcepts {args.method}")
    if args.json:
        print_json(args, {
            "out": str(folder.resolve()),
            "report": None if report is None else str(report.resolve()),
            **result.to_dict(),
        })  # fmt: skip
        return OK
    for i in range(min(3, len(result))):
        found = [(n, v) for n, v in result.top_concepts(i, 3) if v != 0]
        top = ", ".join(f"{n} {v:.3g}" for n, v in found) or "no concept with a non-zero score"
        print(f"image {i}: {result.class_names[int(result.targets[i])]} <- {top}")
    print(f"explanations of {len(result)} images under {folder.resolve()}")
    if report is not None:
        print(f"report: {report.resolve()}")
    return OK


def export(args: argparse.Namespace) -> int:
    explainer = _fit_or_load(args)[0]
    path = Path(explainer.export_onnx(args.out)).resolve()
    if args.json:
        print_json(args, {"out": str(path), "outputs": list(explainer.onnx_outputs)})
        return OK
    print(f"wrote the {args.method} ONNX export to {path}")
    print(f"outputs: {', '.join(explainer.onnx_outputs)}")
    return OK


def report(args: argparse.Namespace) -> int:
    from pyconcepts.report import write_report

    try:
        path = write_report(args.results, args.out, title=args.title)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    size = path.stat().st_size
    if args.json:
        print_json(args, {"report": str(path.resolve()), "bytes": size})
    else:
        print(f"report: {path.resolve()} ({size / 2**20:.2f} MiB)")
    return OK


def evaluate(args: argparse.Namespace) -> int:
    from pyconcepts.scoreboard import run_and_write

    def progress_line(text: str) -> None:  # one line per fitted method and seed
        if not args.no_progress:
            print(text, file=sys.stderr, flush=True)

    try:
        run_and_write(args, log=progress_line)
    except ValueError as exc:
        if args.render is None:
            raise
        raise UsageError(str(exc)) from None
    print(f"scoreboard: {(Path(args.out) / 'quality.md').resolve()}")
    return OK


def serve(args: argparse.Namespace) -> int:
    from pyconcepts.serve import cli_limits, serve

    try:
        limits = cli_limits(
            args.port, args.max_body_mib, args.max_concurrency, args.timeout,
            args.max_connections, args.max_inferences,
        )  # fmt: skip
    except ValueError as exc:  # a usage error, like argparse's own: one line, exit status 2
        raise UsageError(str(exc)) from None
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads: expected an integer >= 1, got {args.threads}")
    try:
        serve(args.model, args.host, args.port, limits, quiet=args.quiet, threads=args.threads)
    except (ValueError, OSError) as exc:  # not an export, port taken
        raise SystemExit(f"serve: {exc}") from exc
    return OK


def backends(args: argparse.Namespace) -> int:
    from pyconcepts import backends as status

    report = status()
    if args.json:
        print_json(args, report)
        return OK
    for name, text in report.items():
        print(f"{name:10s} {text}")
    return OK


def info(args: argparse.Namespace) -> int:
    """Versions, backends, devices, cache folder and which optional extras are installed."""
    import importlib.metadata as metadata

    import torch

    from pyconcepts import __version__
    from pyconcepts import backends as status
    from pyconcepts.models import cache_dir

    def version(dist: str) -> Any:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    extras = {
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
        "gpu": ["onnxruntime-gpu"],
        "test": ["pytest", "hypothesis", "scipy"],
        "bench": ["scipy", "pyfim", "mlxtend", "pytorch-metric-learning"],
        "distributed": ["ray", "pyarrow"],
    }
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})"
                         for i in range(torch.cuda.device_count())]  # fmt: skip
    doc = {
        "pyconcepts": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "backends": status(),
        "devices": devices,
        "cache_dir": str(cache_dir()),
        "extras": {name: all(version(d) for d in dists) for name, dists in extras.items()},
        "packages": {d: version(d) for dists in extras.values() for d in dists},
    }
    if args.json:
        print_json(args, doc)
        return OK
    for key, value in doc.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value)
        print(f"{key:14s} {value}")
    return OK


def zoo(args: argparse.Namespace) -> int:
    from pyconcepts.models import zoo as models

    names = [args.name] if args.name else models.available()
    if args.name and args.name not in models.ZOO:
        raise UsageError(f"unknown model {args.name!r}; expected one of {models.available()}")
    for name in names:
        if args.train or args.retrain:
            models.load(name, retrain=args.retrain, progress=show_progress(args))
    if args.json:
        print_json(args, {"cache": str(models.cache_dir()), **{n: models.info(n) for n in names}})
        return OK
    for name in names:
        found = models.info(name)
        text = "not trained" if found is None else f"test accuracy {found['test_accuracy']:.4f}"
        print(f"{name:10s} {models.ZOO[name].description} — {text}")
    print(f"cache: {models.cache_dir()}")
    return OK
