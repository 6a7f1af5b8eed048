"""``python -m bench.quality``: the quality scoreboard (:mod:`pyconcepts.scoreboard`,
``pyconcepts evaluate``) writing the repository's copies: ``bench/results/quality.json``,
``docs/quality.md`` and ``docs/img/quality.png``. Same options as ``pyconcepts evaluate``;
``--out`` is the repository root by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pyconcepts.scoreboard import Outputs
from pyconcepts.scoreboard import main as scoreboard_main

ROOT = Path(__file__).resolve().parents[1]


def repository_outputs(root: Path) -> Outputs:
    """The scoreboard's files as the repository keeps them under ``root``."""
    return Outputs(root / "bench" / "results" / "quality.json", root / "docs" / "quality.md")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return scoreboard_main(argv, "python -m bench.quality", repository_outputs, ROOT)


if __name__ == "__main__":
    main()
