"""Ray stays optional: only pyconcepts.distributed imports it, and only when called."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyconcepts


def test_nothing_imports_ray_eagerly() -> None:
    code = (
        "import sys, pyconcepts, pyconcepts.cli, pyconcepts.distributed, pyconcepts.explainers;"
        "pyconcepts.cli.build_parser(); assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_only_the_distributed_package_names_ray() -> None:
    root = Path(pyconcepts.__file__).parent
    outside = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "distributed" not in p.parts
        and any(
            line.lstrip().startswith(("import ray", "from ray"))
            for line in p.read_text().splitlines()
        )
    ]
    assert outside == []
