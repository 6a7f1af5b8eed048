"""``python -m bench``: run every benchmark module in this folder (each exposes ``main(argv)``).

Modules whose name starts with ``_`` are helpers and are skipped. ``python -m bench NAME ...``
runs only the named modules.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    wanted = list(sys.argv[1:] if argv is None else argv)
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not m.name.startswith("_")
    )
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; available: {names}")
    for name in wanted or names:
        print(f"\n## bench.{name}\n", flush=True)
        importlib.import_module(f"bench.{name}").main([])


if __name__ == "__main__":
    main()
