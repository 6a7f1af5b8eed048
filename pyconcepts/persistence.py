"""Safe, atomic persistence: tensors in safetensors, everything else as JSON in its header.

One file holds a fitted explainer (or a cached model): the tensors, plus string metadata with
the format name, its version, the pyconcepts version and JSON documents (configuration, fitted
non-tensor state). No pickle is ever involved. Saving writes a temporary file in the target's
folder, fsyncs it and renames it over the target, so an interrupted save leaves the old file
intact. Every load failure is a :class:`~pyconcepts.errors.LoadError` that says why.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from pyconcepts.errors import LoadError

FORMAT = "pyconcepts"
FORMAT_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + fsync + rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_file(
    path: PathLike, tensors: dict[str, torch.Tensor], kind: str, documents: dict[str, Any]
) -> None:
    """Save ``tensors`` and JSON-able ``documents`` under the format tag ``kind``."""
    from pyconcepts import __version__

    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "pyconcepts_version": __version__,
        "kind": kind,
    }
    for key, doc in documents.items():
        metadata[f"json:{key}"] = json.dumps(doc, sort_keys=True)
    dense = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(dense, metadata=metadata))


def load_file(path: PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a file written by :func:`save_file` for ``kind``; returns (tensors, documents)."""
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p}: no such file")
    raw = p.read_bytes()
    metadata = _read_metadata(p, raw)
    if metadata.get("format") != FORMAT:
        raise LoadError(f"{p}: not a pyconcepts file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise LoadError(
            f"{p}: format version {metadata.get('format_version')!r} is not supported "
            f"(this pyconcepts reads version {FORMAT_VERSION})"
        )
    if metadata.get("kind") != kind:
        raise LoadError(f"{p}: holds a {metadata.get('kind')!r}, expected a {kind!r}")
    documents: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith("json:"):
            try:
                documents[key[5:]] = json.loads(value)
            except ValueError as exc:
                raise LoadError(f"{p}: corrupt JSON in {key[5:]!r}: {exc}") from exc
    try:
        tensors = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise LoadError(f"{p}: corrupt tensor data: {exc}") from exc
    return tensors, documents


def _read_metadata(p: Path, raw: bytes) -> dict[str, str]:
    if len(raw) < 8:
        raise LoadError(f"{p}: truncated file ({len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8 or n > 100_000_000:
        raise LoadError(f"{p}: corrupt header (declares {n} bytes, file has {len(raw)})")
    try:
        header = json.loads(raw[8 : 8 + n])
    except ValueError as exc:
        raise LoadError(f"{p}: corrupt header: {exc}") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise LoadError(f"{p}: not a pyconcepts file (no metadata in the safetensors header)")
    return {str(k): str(v) for k, v in metadata.items()}
