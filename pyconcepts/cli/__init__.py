"""Command line: ``pyconcepts demo | explain | export | explain-dataset | report | evaluate |
serve | info | backends | zoo``.

Every command has ``--help``. Exit status: 0 ok, 1 failure, 2 usage error; errors are one line
(``--debug`` shows the traceback); progress bars go to stderr when it is a terminal (never with
``--no-progress``); ``--json`` prints a command's results as one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from pyconcepts import scoreboard
from pyconcepts.cli import commands
from pyconcepts.cli import dataset as dataset_command
from pyconcepts.cli._common import (
    FAILURE,
    USAGE,
    UsageError,
    add_json,
    add_run_options,
    common_options,
    positive_int,
)
from pyconcepts.cli.fitdata import add_fit_options
from pyconcepts.cli.models import add_model_options

__all__ = ["build_parser", "main"]


def _add_explainer_options(parser: argparse.ArgumentParser) -> None:
    """Choose, fit or load an explainer (explain and export)."""
    parser.add_argument("--method", required=True, choices=sorted(commands.METHODS))
    parser.add_argument("--explainer", help="a saved explainer file (skips fitting)")
    add_model_options(parser, "default: the method's usual zoo model")
    add_fit_options(parser)
    parser.add_argument("--options", help="constructor options as JSON, e.g. '{\"n_concepts\": 5}'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyconcepts", description="Concept-based explanations of CNN image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = [common_options()]

    demo = sub.add_parser("demo", parents=common, help="run every explainer on the concept world")
    demo.add_argument(
        "--out", default="pyconcepts-demo", help="output folder (default: %(default)s)"
    )
    demo.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    add_json(demo)
    demo.set_defaults(func=commands.demo)

    ex = sub.add_parser(
        "explain",
        parents=common,
        help="fit (or load) an explainer and explain images",
        description="Fit an explainer (on the concept world for its models, else on --fit-images "
        "or the --images folder: see --fit-images and --concepts) or load a saved one with "
        "--explainer, explain images from a folder or the concept world, and write the "
        "explanations (tensors, manifest, plots) and report.html under --out.",
    )
    _add_explainer_options(ex)
    ex.add_argument("--images", help="folder of .png/.jpg images (default: concept-world images)")
    ex.add_argument(
        "--n-images", type=positive_int, default=8, help="concept-world images to explain"
    )
    ex.add_argument("--save", help="also save the fitted explainer to this file")
    ex.add_argument("--onnx", action="store_true", help="also export explainer.onnx")
    ex.add_argument("--pngs", type=int, default=4, help="plots to write (default: %(default)s)")
    ex.add_argument("--no-report", action="store_true", help="skip report.html")
    ex.add_argument("--out", default="pyconcepts-explanations", help="output folder")
    add_run_options(ex)
    add_json(ex)
    ex.set_defaults(func=commands.explain)

    exp = sub.add_parser(
        "export",
        parents=common,
        help="fit (or load) an explainer and write its ONNX export",
        description="Fit an explainer (on the concept world for its models, else on "
        "--fit-images) or load a saved one with --explainer, and export model + explainer as "
        "one ONNX graph, loadable with "
        "pyconcepts.export.OnnxExplainer and servable with `pyconcepts serve`.",
    )
    _add_explainer_options(exp)
    exp.add_argument("--out", required=True, help="the .onnx file to write")
    add_run_options(exp, batch_size=False)
    add_json(exp)
    exp.set_defaults(func=commands.export)

    dataset_command.add_parser(sub, common)

    rep = sub.add_parser(
        "report",
        parents=common,
        help="write one self-contained HTML page of a results folder",
        description="Render the output of `pyconcepts demo` or `pyconcepts explain` (RESULTS) "
        "as one HTML file with embedded images: explanations, heatmaps, metrics, ground-truth "
        "scores and settings.",
    )
    rep.add_argument("results", help="a results folder (demo or explain output)")
    rep.add_argument("-o", "--out", help="the HTML file to write (default: RESULTS/report.html)")
    rep.add_argument("--title", default="pyconcepts report", help="page title")
    add_json(rep)
    rep.set_defaults(func=commands.report)

    ev = sub.add_parser(
        "evaluate",
        parents=common,
        help="the quality scoreboard: every method against the concept world's ground truths",
        description="Fit every method on both zoo models (3 seeds) and score its class maps and "
        "concept rankings against where the concepts are (masks) and what the model uses "
        "(interventions), next to Grad-CAM, random channels and reference rankings at the same "
        "layer. About 4 minutes on 2 cores; --quick is a small smoke setting. Writes "
        "quality.json, quality.md and img/quality.png to --out.",
    )
    scoreboard.add_arguments(ev, Path("pyconcepts-evaluate"))
    ev.set_defaults(func=commands.evaluate)

    srv = sub.add_parser(  # its options and errors belong to pyconcepts.serve
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
        "--max-body-mib",
        type=float,
        help="largest body in MiB (default: what the largest accepted image can need: 8.23 MiB "
        "for a 224x224 export, 0.73 MiB for 64x64)",
    )
    srv.add_argument(
        "--max-concurrency",
        type=int,
        default=32,
        help="requests explained at once, more get 503 (default: %(default)s)",
    )
    srv.add_argument(
        "--max-inferences",
        type=int,
        help="of those, model runs at once; the others wait (default: the CPU count)",
    )
    srv.add_argument(
        "--threads",
        type=int,
        help="onnxruntime threads per model run (default: one per core)",
    )
    srv.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections open at once, more get 503 (default: %(default)s)",
    )
    srv.add_argument(
        "--timeout", type=float, default=30, help="seconds per request read (default: %(default)s)"
    )
    srv.add_argument("--quiet", action="store_true", help="no per-request log lines")
    srv.set_defaults(func=commands.serve)

    inf = sub.add_parser(
        "info", parents=common, help="versions, backends, devices, cache folder, extras"
    )
    add_json(inf)
    inf.set_defaults(func=commands.info)

    be = sub.add_parser(
        "backends", parents=common, help="which compiled backends loaded, and why not"
    )
    add_json(be)
    be.set_defaults(func=commands.backends)

    zoo = sub.add_parser(
        "zoo", parents=common, help="list, train or retrain the concept-world models"
    )
    zoo.add_argument("name", nargs="?", help="one model (default: all)")
    zoo.add_argument("--train", action="store_true", help="train the model(s) if not cached")
    zoo.add_argument("--retrain", action="store_true", help="train again, replacing the cache")
    add_json(zoo)
    zoo.set_defaults(func=commands.zoo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here, with argparse's message
    args.stdout = sys.stdout
    # under --json, stdout carries the JSON alone: anything else printed goes to stderr
    quiet = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else None
    try:
        with quiet or contextlib.nullcontext():
            return int(args.func(args))
    except UsageError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"pyconcepts {args.command}: error: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"pyconcepts {args.command}: interrupted", file=sys.stderr)
        return FAILURE
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        text = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"pyconcepts {args.command}: error: {type(exc).__name__}: {text} "
            "(--debug shows the traceback)",
            file=sys.stderr,
        )
        return FAILURE
