"""``python -m bench``: run every benchmark module in this folder (each exposes ``main()``), or
``python -m bench --all`` to measure every kernel against the tools over a range of sizes in one
run and regenerate docs/benchmarks.md (tables between markers) and one plot per kernel.

Modules whose name starts with ``_`` are helpers and are skipped. ``python -m bench NAME ...``
runs only the named modules.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path

from pyconcepts.persistence import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent


def run_all(args: argparse.Namespace) -> None:
    """Every kernel of :mod:`bench._suite`, then the page, the plots and the JSON."""
    from bench import _page
    from bench._suite import KERNELS, run_kernel

    sizes = "quick" if args.quick else "full"
    info = _page.machine()
    load_start = os.getloadavg()[0]
    results, parts = {}, []
    for kernel in KERNELS:
        print(f"## {kernel.name}", file=sys.stderr, flush=True)
        result = run_kernel(
            kernel, kernel.sizes[sizes], 3 if args.quick else 5, lambda s: print(s, file=sys.stderr)
        )
        results[kernel.name] = result
        image = args.img / f"bench-{kernel.name}.png"
        _page.plot(kernel, result, image)
        link = os.path.relpath(image, args.page.parent)
        parts.append(
            f"### {kernel.name}\n\n{kernel.title}.\n\n{_page.table(kernel, result)}\n\n"
            f"![{kernel.name}: time against {kernel.size_name}]({link})\n"
        )
    load = (load_start, os.getloadavg()[0])
    _page.write_page(args.page, _page.section(info, load, sizes, parts))
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "load_average": load, "sizes": sizes, "kernels": results}
    atomic_write_bytes(args.out / "all.json", json.dumps(doc, indent=2).encode())
    print(f"wrote {args.page}, {args.img}/bench-*.png and {args.out / 'all.json'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--all", action="store_true", help="every kernel, the page and plots")
    parser.add_argument("--quick", action="store_true", help="with --all: small sizes (minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="JSON folder")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--img", type=Path, default=ROOT / "docs" / "img", help="plot folder")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.all:
        run_all(args)
        return
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not m.name.startswith("_")
    )
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; available: {names}")
    for name in args.names or names:
        print(f"\n## bench.{name}\n", flush=True)
        module = importlib.import_module(f"bench.{name}")
        sys.argv = [f"python -m bench.{name}"]  # each benchmark parses its own, empty, command line
        module.main()


if __name__ == "__main__":
    main()
