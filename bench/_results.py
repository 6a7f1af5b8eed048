"""Where the benchmark modules keep their JSON: ``bench/results/<name>.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyconcepts.persistence import atomic_write_bytes

FOLDER = Path(__file__).resolve().parent / "results"


def save(name: str, doc: Any) -> Path:
    """Write ``doc`` as ``bench/results/<name>.json`` (the folder made if needed)."""
    FOLDER.mkdir(parents=True, exist_ok=True)
    path = FOLDER / f"{name}.json"
    atomic_write_bytes(path, json.dumps(doc, indent=2).encode())
    return path
