"""Safe, atomic persistence: tensors in safetensors, everything else as JSON in its header.

One file holds a fitted explainer (or a cached model): the tensors, plus string metadata with
the format name, its version, the pyconcepts version, JSON documents (configuration, fitted
non-tensor state) and a SHA-256 digest of all of it. No pickle is ever involved. Saving writes a
temporary file in the target's folder, fsyncs it and renames it over the target, so an
interrupted save leaves the old file intact.

Loading treats the file as untrusted input. It reads the 8-byte header length and checks it
against the file size before reading the header, parses the header JSON itself (duplicate keys
refused) and checks every tensor entry (known dtype, non-negative shape, byte range that matches
shape x item size, ranges tiling the data section exactly) before safetensors decodes anything,
then verifies the digest. Every failure is a :class:`~pyconcepts.errors.LoadError` that says
why. Files written before the digest existed carry none and are checked structurally only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from pyconcepts.errors import LoadError

FORMAT = "pyconcepts"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000
DIGEST_KEY = "sha256"
PathLike = Union[str, "os.PathLike[str]"]

# safetensors dtype tag -> item size in bytes, for the dtypes pyconcepts files may hold.
ITEM_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip


def temp_file(target: Path, suffix: str) -> Path:
    """A new, empty file next to ``target`` (same folder, so ``os.replace`` onto it is atomic),
    created exclusively under a random name like :func:`tempfile.mkstemp`, but with mode
    ``0o666`` less the umask, as ``open(target, "w")`` would: ``mkstemp``'s 0600 would make
    every saved file private whatever the umask says. Creates the folder if needed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{target.parent}: no free temporary name for {target.name}")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + fsync + rename."""
    target = Path(path)
    tmp = temp_file(target, ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    metadata[DIGEST_KEY] = _digest(dense, metadata)
    atomic_write_bytes(path, st_save(dense, metadata=metadata))


def load_file(path: PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a file written by :func:`save_file` for ``kind``; returns (tensors, documents)."""
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p}: no such file")
    try:
        with p.open("rb") as f:
            raw, header_len = _read_checked(p, f, os.fstat(f.fileno()).st_size)
    except OSError as exc:
        raise LoadError(f"{p}: cannot be read: {exc}") from exc
    metadata = _check_header(
        p, _parse_header(p, raw[8 : 8 + header_len]), len(raw) - 8 - header_len
    )
    if metadata.get("format") != FORMAT:
        raise LoadError(f"{p}: not a pyconcepts file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise LoadError(
            f"{p}: format version {metadata.get('format_version')!r} is not supported "
            f"(this pyconcepts reads version {FORMAT_VERSION})"
        )
    if metadata.get("kind") != kind:
        raise LoadError(f"{p}: holds a {metadata.get('kind')!r}, expected a {kind!r}")
    try:
        tensors = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise LoadError(f"{p}: corrupt tensor data: {exc}") from exc
    if DIGEST_KEY in metadata and _digest(tensors, metadata) != metadata[DIGEST_KEY]:
        raise LoadError(f"{p}: checksum mismatch (the file was modified or corrupted)")
    documents: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith("json:"):
            try:
                documents[key[5:]] = json.loads(value, object_pairs_hook=_unique_keys)
            except (ValueError, RecursionError) as exc:
                raise LoadError(f"{p}: corrupt JSON in {key[5:]!r}: {exc}") from exc
    return tensors, documents


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the metadata (but the digest itself) and every tensor's name, dtype, shape
    and bytes, in sorted order: independent of how safetensors lays the file out."""
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k != DIGEST_KEY):
        h.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _read_checked(p: Path, f: BinaryIO, size: int) -> tuple[bytes, int]:
    """The whole file and its header length, checked against the file size before the rest of
    the file is read."""
    if size < 10:
        raise LoadError(f"{p}: truncated file ({size} bytes; a safetensors file has at least 10)")
    header_len = int.from_bytes(f.read(8), "little")
    if header_len > min(size - 8, MAX_HEADER_BYTES) or header_len < 2:
        raise LoadError(
            f"{p}: corrupt header length (declares {header_len} bytes; expected 2 to "
            f"{min(size - 8, MAX_HEADER_BYTES)} for a file of {size} bytes)"
        )
    f.seek(0)
    raw: bytes = f.read()
    if len(raw) != size:
        raise LoadError(f"{p}: the file changed while it was read ({size} -> {len(raw)} bytes)")
    return raw, header_len


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _parse_header(p: Path, text: bytes) -> dict[str, Any]:
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise LoadError(f"{p}: corrupt header: {exc}") from exc
    if not isinstance(header, dict):
        raise LoadError(f"{p}: corrupt header: expected a JSON object, got {type(header).__name__}")
    return header


def _check_header(p: Path, header: dict[str, Any], data_len: int) -> dict[str, str]:
    """Checks every tensor entry of a safetensors header; returns its string metadata."""
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict):
        raise LoadError(f"{p}: not a pyconcepts file (no metadata in the safetensors header)")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise LoadError(f"{p}: corrupt header: metadata values must be strings")
    ranges = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise LoadError(
                f"{p}: corrupt header: tensor {name!r} must have exactly dtype, shape and "
                f"data_offsets, got {entry!r:.200}"
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ITEM_SIZES:
            raise LoadError(
                f"{p}: tensor {name!r}: dtype {dtype!r:.50} is not one of {sorted(ITEM_SIZES)}"
            )
        if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
            raise LoadError(f"{p}: tensor {name!r}: shape {shape!r:.200} is not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_size, offsets)):
            raise LoadError(f"{p}: tensor {name!r}: data_offsets {offsets!r:.200} are not 2 sizes")
        nbytes = math.prod(shape) * ITEM_SIZES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise LoadError(
                f"{p}: tensor {name!r}: {dtype} {shape} needs {nbytes} bytes, its data_offsets "
                f"{offsets} span {offsets[1] - offsets[0]}"
            )
        ranges.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(ranges):
        if begin != end:
            raise LoadError(f"{p}: tensor {name!r} starts at byte {begin}, expected {end}")
        end = stop
    if end != data_len:
        raise LoadError(f"{p}: tensor data takes {end} bytes, the file holds {data_len}")
    return metadata


def _is_size(value: object) -> bool:
    return type(value) is int and value >= 0
