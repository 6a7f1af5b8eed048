"""Command line: ``pyconcepts demo | backends | zoo``. Every command has ``--help``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


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
        status = "not cached" if info is None else f"test accuracy {info['test_accuracy']:.4f}"
        print(f"{name:10s} {zoo.ZOO[name].description} — {status}")
    print(f"cache: {zoo.cache_dir()}")
    if args.json:
        print(json.dumps({n: zoo.info(n) for n in names}, indent=2))
    return 0


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
