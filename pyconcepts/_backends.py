"""Which compiled backends loaded, and why one did not.

The compiled modules are optional at import time: a missing or broken ``_core`` makes every op
fall back to its pure-torch reference twin (slower, same results), and ``backends()`` says why.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Optional

_PACKAGE_DIR = Path(__file__).resolve().parent


def _build_info() -> dict[str, str]:
    for folder in [_PACKAGE_DIR, *_extension_dirs()]:
        path = folder / "_build_info.json"
        if path.is_file():
            try:
                return dict(json.loads(path.read_text()))
            except (OSError, ValueError):
                return {}
    return {}


def _extension_dirs() -> list[Path]:
    # An editable install keeps the compiled modules outside the source tree.
    import pyconcepts

    return [Path(p) for p in getattr(pyconcepts, "__path__", []) if Path(p) != _PACKAGE_DIR]


def _try_import(name: str) -> tuple[Optional[ModuleType], str]:
    try:
        module = importlib.import_module(f"pyconcepts.{name}")
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return module, ""


_core, _core_error = _try_import("_core")
_core_cuda, _core_cuda_error = _try_import("_core_cuda")


def core() -> Optional[ModuleType]:
    """The CPU module ``pyconcepts._core``, or None when it failed to import."""
    return _core


def core_cuda() -> Optional[ModuleType]:
    """The CUDA module ``pyconcepts._core_cuda``, or None when it is not built or not usable."""
    return _core_cuda


def cuda_usable() -> bool:
    """True when the CUDA module is built and the runtime sees at least one device."""
    return _core_cuda is not None and _core_cuda.device_count() > 0


def backends() -> dict[str, str]:
    """Report each backend as ``{"cpu": ..., "cuda": ..., "reference": ...}`` with a reason.

    >>> pyconcepts.backends()["cpu"]        # doctest: +SKIP
    'loaded (OpenMP, 2 threads)'
    """
    info = _build_info()
    report: dict[str, str] = {"reference": "always available (pure torch)"}
    if _core is not None:
        report["cpu"] = f"loaded (OpenMP, {_core.num_threads()} threads)"
    else:
        report["cpu"] = f"not loaded: {_core_error}; ops fall back to the reference twins"
    if _core_cuda is not None:
        n = _core_cuda.device_count()
        report["cuda"] = f"loaded, {n} device(s) visible" if n else "built, but no CUDA device"
    elif "cuda" in info and not info["cuda"].startswith("built"):
        report["cuda"] = info["cuda"]
    else:
        report["cuda"] = f"not loaded: {_core_cuda_error}"
    return report
