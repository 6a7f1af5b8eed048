"""Safe, atomic persistence: tensors in safetensors, everything else as JSON in its header.

One file holds a fitted explainer (or a cached model): the tensors, plus string metadata with
the format name, its version, the pyconcepts version, JSON documents (configuration, fitted
non-tensor state) and a SHA-256 digest of all of it. No pickle is ever involved. Saving writes a
temporary file in the target's folder, fsyncs it and renames it over the target, so an
interrupted save leaves the old file intact.

Loading treats the file as untrusted input. It reads the 8-byte header length and checks it
against the file size before reading the header, parses the header JSON itself (duplicate keys
refused) and checks every tensor entry (known dtype, non-negative shape, byte range that matches
shape x item size, ranges tiling the data section exactly) before any tensor is read, then
verifies the digest. Every failure is a :class:`~pyconcepts.errors.LoadError` that says why.
Files written before the digest existed carry none and are checked structurally only.

Both directions stream the tensors (a standard safetensors file, read and written here one
tensor at a time): safetensors' own ``save`` / ``load`` hold a bytes copy of every tensor
beside the tensors, and saving 4.1 GiB of tensors (SRAE's weights at 1,000 classes) peaked at
12.6 GiB, loading it at 8.4 GiB (2026-12-07). The digest is computed on a second thread from
the same chunks as they are read or written (:class:`_ThreadedSha256`; hashlib releases the GIL
on large buffers), so hashing overlaps the file I/O instead of following it; a save writes the
header with a placeholder digest and fills it in once the tensors are written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import secrets
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Callable, Optional, Union

import torch

from pyconcepts.errors import LoadError

FORMAT = "pyconcepts"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000
DIGEST_KEY = "sha256"
CHUNK_BYTES = 16 << 20  # tensor bytes per read / write / hash step
PathLike = Union[str, "os.PathLike[str]"]

# safetensors dtype tag -> torch dtype, for the dtypes pyconcepts files may hold.
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
ITEM_SIZES = {tag: dtype.itemsize for tag, dtype in DTYPES.items()}  # bytes per element
TAGS = {dtype: tag for tag, dtype in DTYPES.items()}


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


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, fsync it and rename it over
    ``path``: an interrupted write leaves the old file (or none) and removes the temporary."""
    target = Path(path)
    tmp = temp_file(target, ".tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(data))


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
    for name, t in dense.items():
        if t.dtype not in TAGS:
            raise TypeError(
                f"tensors[{name!r}]: dtype {t.dtype} cannot be saved "
                f"(one of {sorted(map(str, TAGS))})"
            )
    atomic_write(path, lambda f: _write_safetensors(f, dense, metadata))


def _write_safetensors(
    f: BinaryIO, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """The safetensors layout: header length (8 bytes, little-endian), the JSON header padded
    with spaces to 8 bytes, then each tensor's bytes in the header's order (sorted names).
    The header's digest is a placeholder of the same length until the tensors are written and
    hashed, then overwritten in place."""
    placeholder = "0" * hashlib.sha256().digest_size * 2
    header: dict[str, Any] = {"__metadata__": {**metadata, DIGEST_KEY: placeholder}}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        end = offset + t.numel() * t.element_size()
        header[name] = {
            "dtype": TAGS[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    # keys and values are JSON strings, so this pair occurs once: a document's quotes are escaped
    slot = text.index(f"{json.dumps(DIGEST_KEY)}:{json.dumps(placeholder)}".encode())
    slot += len(json.dumps(DIGEST_KEY)) + 2
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    with _ThreadedSha256(metadata) as digest:
        for name in sorted(tensors):
            t = tensors[name]
            digest.update(_tensor_prefix(name, t))
            data = _bytes_of(t)
            for i in range(0, len(data), CHUNK_BYTES):
                f.write(data[i : i + CHUNK_BYTES])
                digest.update(data[i : i + CHUNK_BYTES])
        f.seek(8 + slot)
        f.write(digest.hexdigest().encode())


def _bytes_of(t: torch.Tensor) -> memoryview:
    """A contiguous tensor's bytes, without a copy."""
    return t.reshape(-1).view(torch.uint8).numpy().data


def load_file(path: PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a file written by :func:`save_file` for ``kind``; returns (tensors, documents)."""
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p}: no such file")
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            header_len = _header_length(p, f, size)
            header = _parse_header(p, _read_exactly(p, f, header_len, size))
            metadata = _check_header(p, header, size - 8 - header_len)
            _check_metadata(p, metadata, kind)
            with _ThreadedSha256(metadata) as digest:
                tensors = {
                    name: _read_tensor(p, f, 8 + header_len, (name, header[name]), size, digest)
                    for name in sorted(header)
                }
                actual = digest.hexdigest()
            if os.fstat(f.fileno()).st_size != size:
                raise LoadError(f"{p}: the file changed while it was read")
    except OSError as exc:
        raise LoadError(f"{p}: cannot be read: {exc}") from exc
    if DIGEST_KEY in metadata and actual != metadata[DIGEST_KEY]:
        raise LoadError(f"{p}: checksum mismatch (the file was modified or corrupted)")
    documents: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith("json:"):
            try:
                documents[key[5:]] = json.loads(value, object_pairs_hook=_unique_keys)
            except (ValueError, RecursionError) as exc:
                raise LoadError(f"{p}: corrupt JSON in {key[5:]!r}: {exc}") from exc
    return tensors, documents


class _ThreadedSha256:
    """The file's digest: SHA-256 over the metadata (but the digest itself), then, in sorted
    name order, every tensor's :func:`_tensor_prefix` and bytes (independent of how the file
    lays the tensors out). ``update`` hands a chunk to a hashing thread and returns at once,
    so the caller reads or writes the next chunk meanwhile; a chunk must stay unchanged until
    :meth:`hexdigest`. Leaving the ``with`` block stops the thread, also on an error."""

    def __init__(self, metadata: dict[str, str]) -> None:
        self._hash = hashlib.sha256()
        for key in sorted(k for k in metadata if k != DIGEST_KEY):
            self._hash.update(json.dumps([key, metadata[key]]).encode())
        self._chunks: queue.Queue[Optional[memoryview | bytes]] = queue.Queue(maxsize=4)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="pyconcepts-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (chunk := self._chunks.get()) is not None:
                self._hash.update(chunk)
        except BaseException as exc:  # kept for hexdigest; draining keeps update from blocking
            self._error = exc
            while self._chunks.get() is not None:
                pass

    def update(self, chunk: memoryview | bytes) -> None:
        self._chunks.put(chunk)

    def hexdigest(self) -> str:
        self._stop()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()

    def __enter__(self) -> _ThreadedSha256:
        return self

    def __exit__(
        self, kind: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self._stop()


def _tensor_prefix(name: str, t: torch.Tensor) -> bytes:
    """What the digest hashes before a tensor's bytes: its name, dtype and shape."""
    return json.dumps([name, str(t.dtype), list(t.shape)]).encode()


def _check_metadata(p: Path, metadata: dict[str, str], kind: str) -> None:
    if metadata.get("format") != FORMAT:
        raise LoadError(f"{p}: not a pyconcepts file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise LoadError(
            f"{p}: format version {metadata.get('format_version')!r} is not supported "
            f"(this pyconcepts reads version {FORMAT_VERSION})"
        )
    if metadata.get("kind") != kind:
        raise LoadError(f"{p}: holds a {metadata.get('kind')!r}, expected a {kind!r}")


def _header_length(p: Path, f: BinaryIO, size: int) -> int:
    """The header length, checked against the file size before the header is read."""
    if size < 10:
        raise LoadError(f"{p}: truncated file ({size} bytes; a safetensors file has at least 10)")
    header_len = int.from_bytes(f.read(8), "little")
    if header_len > min(size - 8, MAX_HEADER_BYTES) or header_len < 2:
        raise LoadError(
            f"{p}: corrupt header length (declares {header_len} bytes; expected 2 to "
            f"{min(size - 8, MAX_HEADER_BYTES)} for a file of {size} bytes)"
        )
    return header_len


def _read_exactly(p: Path, f: BinaryIO, n: int, size: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise LoadError(f"{p}: the file changed while it was read ({size} bytes before)")
    return data


def _read_tensor(
    p: Path,
    f: BinaryIO,
    start: int,
    named: tuple[str, dict[str, Any]],
    size: int,
    digest: _ThreadedSha256,
) -> torch.Tensor:
    """One tensor of a checked header entry, read straight into its storage chunk by chunk,
    each chunk handed to ``digest`` as soon as it is read."""
    name, entry = named
    t = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
    digest.update(_tensor_prefix(name, t))
    begin, end = entry["data_offsets"]
    f.seek(start + begin)
    data = _bytes_of(t)
    for i in range(0, end - begin, CHUNK_BYTES):
        chunk = data[i : i + CHUNK_BYTES]
        if f.readinto(chunk) != len(chunk):  # type: ignore[attr-defined]
            raise LoadError(f"{p}: the file changed while it was read ({size} bytes before)")
        digest.update(chunk)
    return t


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
