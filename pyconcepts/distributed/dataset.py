"""Explain a data set of any size on Ray Data, into resumable parquet shards.

:func:`explain_dataset` plans the work on the driver — the sorted image files of a folder (or
the rows of parquet files) cut into shards of ``shard_size`` images, shard ``i`` always holding
the same images — and runs the shards not yet written as a Ray Data ``map_batches`` over an
actor pool: each actor holds one explainer (a torch explainer loaded from ``out/explainer.pcx``
onto its device, or one onnxruntime session of an ONNX export), decodes its shard's images
(``cpus_per_worker`` threads), explains them in batches and writes the shard.

The folder ``out`` (shared storage when the cluster has several machines) holds:

- ``_manifest.json``: the run's identity — source, plan digest, explainer digest,
  preprocessing, heatmap format — and the explainer's method, layer, concept and class names;
- ``explainer.pcx``: the fitted torch explainer the actors load (absent for an ONNX export);
- ``part-000000.parquet``, …: one file per shard, its rows in plan order, zstd-compressed
  (floats byte-stream-split first, which is what lets zstd shrink them). Columns: ``key`` (the
  image's path relative to the source folder, or its parquet ``key_column`` value, else
  ``file:row``), ``index`` (position in the plan), ``target``, ``prediction``, ``logits``,
  ``concept_scores`` and, where the method has maps, ``heatmap_concepts``, ``heatmaps``
  (``[C, h, w]`` flattened) and ``class_map`` (``[h, w]`` flattened); the file's schema
  metadata ``pyconcepts`` gives the map shapes. :func:`load_explanations` reads them back as
  one :class:`~pyconcepts.explanation.Explanation`.

Nothing is written twice or half-written: a shard goes to a temporary file in ``out`` that is
renamed to its final name only once complete. A run skips the shards whose file exists (after
checking its row count), so an interrupted run resumes where it stopped, and a worker that dies
has its shard retried by Ray on a restarted actor (``max_retries``); a retried shard rewrites
the same file with the same rows. One run at a time writes to a folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np
import torch
from torch.nn import functional as F

from pyconcepts.data.images import decode_image, image_files, normalise, to_batch
from pyconcepts.distributed._ray import require
from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.base import ConceptExplainer
from pyconcepts.explanation import Explanation
from pyconcepts.persistence import atomic_write_bytes, load_file, temp_file

FORMAT = "pyconcepts-dataset-explanations"
FORMAT_VERSION = 1
MANIFEST = "_manifest.json"
EXPLAINER_FILE = "explainer.pcx"
_PART = "part-{:06d}.parquet"
_HEATMAP_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class DatasetRun:
    """What :func:`explain_dataset` did: shards written now and skipped (already there)."""

    out: Path
    n_images: int
    n_shards: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    images_written: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images explained and written per second of this run, end to end: actor start and
        explainer load included (0 when nothing was written)."""
        return self.images_written / self.seconds if self.images_written and self.seconds else 0.0

    @property
    def images_per_worker_second(self) -> float:
        """Images per second of one busy worker (decode, explain, write; start-up excluded)."""
        busy = self.busy_seconds
        return self.images_written / busy if self.images_written and busy else 0.0


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to explain and write a shard (sent to each actor once)."""

    out: str
    kind: str  # "folder" or "parquet"
    root: str
    onnx: Optional[str]
    explainer_class: Optional[type[ConceptExplainer]]
    size: tuple[int, int]
    mean: Optional[list[float]]
    std: Optional[list[float]]
    batch_size: int
    heatmap_size: Optional[tuple[int, int]]
    heatmap_dtype: str
    image_column: str
    key_column: Optional[str]
    threads: int
    gpu: bool
    names: dict[str, Any]  # method, layer, concept_names, class_names


def explain_dataset(
    explainer: Union[ConceptExplainer, str, Path],
    source: Union[str, Path],
    out: Union[str, Path],
    *,
    batch_size: int = 64,
    shard_size: int = 1024,
    num_workers: int = 2,
    cpus_per_worker: int = 1,
    use_gpu: Optional[bool] = None,
    image_size: Optional[tuple[int, int]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    heatmap_size: Optional[tuple[int, int]] = None,
    heatmap_dtype: str = "float32",
    image_column: str = "image",
    key_column: Optional[str] = None,
    max_retries: int = 3,
    progress: bool = False,
) -> DatasetRun:
    """Explain every image of ``source`` with ``explainer`` on Ray, writing parquet shards to
    ``out`` (layout and guarantees: the module doc). Returns a :class:`DatasetRun`.

    Args:
        explainer: a fitted torch explainer, or the path of an ONNX export
            (:meth:`~pyconcepts.explainers.base.ConceptExplainer.export_onnx`).
        source: a folder of .png/.jpg images (searched recursively, sorted by relative path),
            or a parquet file or folder of parquet files whose ``image_column`` holds encoded
            PNG/JPEG bytes (a binary column, or a struct with a ``bytes`` field).
        out: the output folder; a run on a folder written before resumes it (the manifest
            must match: same source, explainer and settings).
        batch_size: images per explain call inside a worker.
        shard_size: images per output file (the unit of retry and of resumption).
        num_workers: actors in the pool, each with its own explainer.
        cpus_per_worker: CPUs (and torch/onnxruntime threads) of each actor.
        use_gpu: one GPU per actor; None: when the Ray cluster has GPUs.
        image_size: ``(H, W)`` images are resized to; default: the explainer's input size.
        mean, std: per-channel normalisation applied after scaling to [0, 1].
        heatmap_size: ``(h, w)`` to average-pool the heatmaps and class maps to before writing
            (None: input resolution) — what keeps the output of millions of images small.
        heatmap_dtype: ``"float32"`` or ``"float16"`` for the stored maps.
        image_column, key_column: parquet columns of the image bytes and of the image id.
        max_retries: restarts of a dead actor and retries of its shard before the run fails.
        progress: show a progress bar of shards.
    """
    ray = require()
    check_positive_ints(batch_size=batch_size, shard_size=shard_size, num_workers=num_workers,
                        cpus_per_worker=cpus_per_worker)  # fmt: skip
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries: expected an int >= 0, got {max_retries!r}")
    if heatmap_dtype not in _HEATMAP_DTYPES:
        raise ValueError(f"heatmap_dtype: expected one of {_HEATMAP_DTYPES}, got {heatmap_dtype!r}")
    heatmap_size = _size_or_none(heatmap_size, "heatmap_size")
    kind, root, shards = _plan(Path(source), shard_size, image_column, key_column)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(explainer, target, image_size)
    try:
        _claim(target, _manifest(prepared, kind, root, shards, shard_size, image_column,
                                 key_column, mean, std, heatmap_size, heatmap_dtype))  # fmt: skip
        if prepared.saved is not None:  # the same content as any explainer.pcx already there
            os.replace(prepared.saved, target / EXPLAINER_FILE)
    finally:
        if prepared.saved is not None:
            prepared.saved.unlink(missing_ok=True)
    if not ray.is_initialized():
        ray.init()
    gpu = bool(ray.cluster_resources().get("GPU", 0) >= 1) if use_gpu is None else bool(use_gpu)
    _remove_temporaries(target)
    pending = [s for s in shards if not _complete(target, s)]
    skipped = sorted(set(range(len(shards))) - {s["shard"] for s in pending})
    job = _Job(
        out=str(target.resolve()), kind=kind, root=root, onnx=prepared.onnx,
        explainer_class=prepared.cls, size=prepared.size, mean=_floats(mean), std=_floats(std),
        batch_size=batch_size, heatmap_size=heatmap_size, heatmap_dtype=heatmap_dtype,
        image_column=image_column, key_column=key_column, threads=cpus_per_worker, gpu=gpu,
        names=prepared.names,
    )  # fmt: skip
    start = time.perf_counter()
    done = _run(ray, job, prepared.model, pending, num_workers, cpus_per_worker, max_retries,
                progress)  # fmt: skip
    seconds = time.perf_counter() - start
    _remove_temporaries(target)
    missing = [s["shard"] for s in shards if not _complete(target, s)]
    if missing:
        raise RuntimeError(f"out: shards {missing[:8]} were not written; run again to resume")
    return DatasetRun(
        out=target, n_images=sum(_rows(s) for s in shards), n_shards=len(shards),
        written=sorted(done), skipped=skipped, images_written=sum(_rows(s) for s in pending),
        seconds=seconds, busy_seconds=sum(done.values()),
    )  # fmt: skip


def _manifest(
    prepared: _Prepared,
    kind: str,
    root: str,
    shards: list[dict[str, Any]],
    shard_size: int,
    image_column: str,
    key_column: Optional[str],
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
    heatmap_size: Optional[tuple[int, int]],
    heatmap_dtype: str,
) -> dict[str, Any]:
    """The run's identity: what a later run on the same folder must match to resume it."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": {"kind": kind, "root": root, "columns": [image_column, key_column]},
        "n_images": sum(_rows(s) for s in shards),
        "n_shards": len(shards),
        "shard_size": shard_size,
        "plan_sha256": _digest(json.dumps(shards, sort_keys=True).encode()),
        "explainer_sha256": prepared.digest,
        "preprocessing": {"size": list(prepared.size), "mean": _floats(mean), "std": _floats(std)},
        "heatmaps": [None if heatmap_size is None else list(heatmap_size), heatmap_dtype],
        **prepared.names,
    }


def _run(
    ray: Any,
    job: _Job,
    model: Any,
    pending: list[dict[str, Any]],
    num_workers: int,
    cpus: int,
    max_retries: int,
    progress: bool,
) -> dict[int, float]:
    """The pending shards through an actor pool (one shard per call): shard → seconds its
    (last, successful) write took."""
    if not pending:
        return {}
    data = require("ray.data")
    context = data.DataContext.get_current()
    shown = context.enable_progress_bars
    context.enable_progress_bars = progress
    try:
        results = (
            data.from_items(pending, override_num_blocks=len(pending))
            .map_batches(
                _ShardWriter,
                batch_size=1,
                compute=data.ActorPoolStrategy(size=min(num_workers, len(pending))),
                fn_constructor_kwargs={"job": job, "model": model},
                num_cpus=cpus,
                num_gpus=1 if job.gpu else 0,
                ray_remote_args_fn=functools.partial(
                    dict, max_restarts=max_retries, max_task_retries=max_retries
                ),
            )
            .take_all()
        )
    finally:
        context.enable_progress_bars = shown
    return {int(r["shard"]): float(r["seconds"]) for r in results}


class _ShardWriter:
    """A Ray Data actor: one explainer, loaded once; each call explains and writes shards."""

    def __init__(self, job: _Job, model: Optional[torch.nn.Module]) -> None:
        torch.set_num_threads(job.threads)
        self.job = job
        self.decoders = ThreadPoolExecutor(job.threads)  # PIL decodes without the GIL
        self.device = torch.device("cuda" if job.gpu and job.onnx is None else "cpu")
        self.explainer: Any
        if job.onnx is not None:
            from pyconcepts.export import OnnxExplainer, default_providers

            providers = default_providers() if job.gpu else ["CPUExecutionProvider"]
            self.explainer = OnnxExplainer(job.onnx, providers=providers, threads=job.threads)
        else:
            assert job.explainer_class is not None and model is not None
            self.explainer = job.explainer_class.load(
                Path(job.out) / EXPLAINER_FILE, model=model.to(self.device).eval()
            )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        seconds = []
        for shard in rows:
            start = time.perf_counter()
            self._write(shard)
            seconds.append(time.perf_counter() - start)
        return {
            "shard": np.array([int(s["shard"]) for s in rows], dtype=np.int64),
            "seconds": np.array(seconds, dtype=np.float64),
        }

    def _write(self, shard: dict[str, Any]) -> None:
        pq = require("pyarrow.parquet")
        job = self.job
        keys, sources = _shard_inputs(job, shard)
        final = Path(job.out) / _PART.format(int(shard["shard"]))
        decode = functools.partial(decode_image, size=job.size)
        tmp = temp_file(final, ".tmp")
        writer = None
        try:
            for lo in range(0, len(sources), job.batch_size):
                hi = min(lo + job.batch_size, len(sources))
                arrays = list(self.decoders.map(decode, sources[lo:hi]))
                images = normalise(to_batch(arrays), job.mean, job.std).to(self.device)
                first = int(shard["start"]) + lo
                table = _table(self.explainer.explain(images), keys[lo:hi], first, job)
                if writer is None:
                    writer = pq.ParquetWriter(
                        str(tmp), table.schema, compression="zstd",
                        use_byte_stream_split=_float_columns(table),
                    )  # fmt: skip
                writer.write_table(table)
            assert writer is not None  # a shard is never empty
            writer.close()
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
            raise


def _shard_inputs(job: _Job, shard: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """(keys, image sources: paths or encoded bytes) of a shard's images, in plan order."""
    root = Path(job.root)
    if job.kind == "folder":
        names = [str(f) for f in shard["files"]]
        return names, [root / n for n in names]
    path = root / str(shard["file"]) if root.is_dir() else root
    lo, hi = int(shard["start_row"]), int(shard["stop_row"])
    columns = [job.image_column] + ([job.key_column] if job.key_column else [])
    table = _parquet_rows(path, lo, hi, columns)
    images = [v["bytes"] if isinstance(v, dict) else v for v in table[job.image_column].to_pylist()]
    for i, v in enumerate(images):
        if not isinstance(v, bytes):
            raise TypeError(
                f"image_column {job.image_column!r}: expected encoded image bytes (or a struct "
                f"with 'bytes'), got {type(v).__name__} in row {lo + i} of {path}"
            )
    if job.key_column:
        keys = [str(k) for k in table[job.key_column].to_pylist()]
    else:
        keys = [f"{shard['file']}:{r}" for r in range(lo, hi)]
    return keys, images


def _parquet_rows(path: Path, start: int, stop: int, columns: list[str]) -> Any:
    """Rows ``[start, stop)`` of a parquet file, reading only the row groups they touch."""
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    f = pq.ParquetFile(path)
    parts, offset = [], 0
    for g in range(f.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            parts.append(f.read_row_group(g, columns=columns).slice(lo - offset, hi - lo))
        offset += n
    return pa.concat_tables(parts)


def _table(result: Explanation, keys: list[str], first: int, job: _Job) -> Any:
    """One explained batch as a parquet table (the module doc's columns)."""
    pa = require("pyarrow")
    n = len(result)
    columns: dict[str, Any] = {
        "key": pa.array(keys, pa.string()),
        "index": pa.array(np.arange(first, first + n, dtype=np.int64)),
        "target": pa.array(result.targets.cpu().numpy().astype(np.int64)),
        "prediction": pa.array(result.predictions.cpu().numpy().astype(np.int64)),
        "logits": _fixed(result.logits.float()),
        "concept_scores": _fixed(result.concept_scores.float()),
    }
    shapes: dict[str, list[int]] = {}
    combined = [result.class_map(i) for i in range(n)]
    if result.heatmaps is not None and result.heatmap_concepts is not None:
        maps = _pool(result.heatmaps.float(), job.heatmap_size).to(_dtype(job.heatmap_dtype))
        columns["heatmap_concepts"] = _fixed(result.heatmap_concepts.long())
        columns["heatmaps"] = _fixed(maps)
        shapes["heatmaps"] = list(maps.shape[1:])
    if all(m is not None for m in combined):
        stacked = torch.stack([m for m in combined if m is not None]).float()
        maps = _pool(stacked[:, None], job.heatmap_size)[:, 0].to(_dtype(job.heatmap_dtype))
        columns["class_map"] = _fixed(maps)
        shapes["class_map"] = list(maps.shape[1:])
    table = pa.table(columns)
    meta = {**job.names, "shapes": shapes}
    return table.replace_schema_metadata({"pyconcepts": json.dumps(meta)})


def _fixed(values: torch.Tensor) -> Any:
    """A ``[N, ...]`` tensor as a fixed-size-list column of its flattened rows."""
    pa = require("pyarrow")
    flat = values.detach().cpu().contiguous().numpy()
    width = int(np.prod(flat.shape[1:], dtype=np.int64))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)


def _pool(maps: torch.Tensor, size: Optional[tuple[int, int]]) -> torch.Tensor:
    return maps if size is None else F.adaptive_avg_pool2d(maps, size)


def _dtype(name: str) -> torch.dtype:
    return torch.float16 if name == "float16" else torch.float32


def _float_columns(table: Any) -> list[str]:
    pa = require("pyarrow")
    floating = [
        f.name
        for f in table.schema
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_floating(f.type.value_type)
    ]
    return floating


# ---- planning and the manifest -----------------------------------------------------------
def _plan(
    source: Path, shard_size: int, image_column: str, key_column: Optional[str]
) -> tuple[str, str, list[dict[str, Any]]]:
    """(kind, root, shards): the same source and shard size always give the same shards."""
    if source.is_dir() and not any(source.rglob("*.parquet")):
        files = [p.relative_to(source).as_posix() for p in image_files(source, recursive=True)]
        if not files:
            raise ValueError(f"source: no .png/.jpg/.jpeg images under {str(source)!r}")
        planned = [
            {"shard": i, "start": lo, "files": files[lo : lo + shard_size]}
            for i, lo in enumerate(range(0, len(files), shard_size))
        ]
        return "folder", str(source.resolve()), planned
    pq = require("pyarrow.parquet")
    if source.is_dir():
        paths = sorted(source.rglob("*.parquet"))
    elif source.is_file() and source.suffix == ".parquet":
        paths = [source]
    else:
        raise ValueError(
            f"source: expected a folder of images, a .parquet file or a folder of them, got "
            f"{str(source)!r}"
        )
    shards: list[dict[str, Any]] = []
    start = 0
    for p in paths:
        f = pq.ParquetFile(p)
        for column in [image_column] + ([key_column] if key_column else []):
            if column not in f.schema_arrow.names:
                which = "image_column" if column == image_column else "key_column"
                raise ValueError(
                    f"{which}: {p} has no column {column!r}; its columns: {f.schema_arrow.names}"
                )
        rel = p.relative_to(source).as_posix() if source.is_dir() else p.name
        n = f.metadata.num_rows
        for lo in range(0, n, shard_size):
            hi = min(lo + shard_size, n)
            shards.append({"shard": len(shards), "start": start, "file": rel,
                           "start_row": lo, "stop_row": hi})  # fmt: skip
            start += hi - lo
    if not shards:
        raise ValueError(f"source: the parquet files under {str(source)!r} hold no rows")
    return "parquet", str(source.resolve()), shards


def _remove_temporaries(out: Path) -> None:
    """Delete the partial shards of workers that died mid-shard (their shards were redone)."""
    for stale in out.glob(".part-*.tmp"):
        stale.unlink(missing_ok=True)


def _rows(shard: dict[str, Any]) -> int:
    if "files" in shard:
        return len(shard["files"])
    return int(shard["stop_row"]) - int(shard["start_row"])


def _complete(out: Path, shard: dict[str, Any]) -> bool:
    """True when the shard's file exists with the planned number of rows."""
    path = out / _PART.format(shard["shard"])
    if not path.exists():
        return False
    pq = require("pyarrow.parquet")
    got = pq.ParquetFile(path).metadata.num_rows
    if got != _rows(shard):
        raise ValueError(
            f"out: {path} holds {got} rows where the plan has {_rows(shard)}; it was not "
            "written by this plan: remove it (or use another out folder)"
        )
    return True


class _Prepared(NamedTuple):
    onnx: Optional[str]  # the export's path, or None for a torch explainer
    cls: Optional[type[ConceptExplainer]]
    model: Any
    names: dict[str, Any]  # method, layer, concept_names, class_names
    size: tuple[int, int]
    digest: str  # of the explainer's content
    saved: Optional[Path]  # a torch explainer saved to a temporary file in ``out``


def _prepare(
    explainer: Union[ConceptExplainer, str, Path],
    out: Path,
    image_size: Optional[tuple[int, int]],
) -> _Prepared:
    """What the run needs of the explainer; a torch explainer is saved next to
    ``out/explainer.pcx`` (renamed onto it once the manifest accepts the run)."""
    given = _size_or_none(image_size, "image_size")
    if isinstance(explainer, ConceptExplainer):
        explainer._check_fitted()
        tmp = temp_file(out / EXPLAINER_FILE, ".tmp")
        try:
            explainer.save(tmp)
            digest = _explainer_digest(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        state = vars(explainer)
        names = {
            "method": explainer.method,
            "layer": str(state.get("layer_") or getattr(explainer, "layer", "") or ""),
            "concept_names": list(state.get("concept_names_", [])),
            "class_names": list(state.get("class_names_", [])),
        }
        size = given or (int(explainer.input_size_[0]), int(explainer.input_size_[1]))
        return _Prepared(None, type(explainer), explainer.model, names, size, digest, tmp)
    if isinstance(explainer, (str, Path)):
        from pyconcepts.export import OnnxExplainer

        path = Path(explainer)
        served = OnnxExplainer(path)  # checks the file before any worker opens it
        shape = served.input_shape
        height, width = shape[2:] if len(shape) == 4 else (None, None)
        if given is None and (height is None or width is None):
            raise ValueError(f"image_size: {path} has a dynamic image size; give (H, W)")
        size = given or (int(height or 0), int(width or 0))
        names = {
            "method": served.method,
            "layer": served.layer,
            "concept_names": served.concept_names,
            "class_names": served.class_names,
        }
        return _Prepared(str(path.resolve()), None, None, names, size,
                         _digest(path.read_bytes()), None)  # fmt: skip
    raise TypeError(
        f"explainer: expected a fitted ConceptExplainer or the path of an ONNX export, got "
        f"{type(explainer).__name__}"
    )


def _claim(out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, or check that the one in ``out`` describes the same run."""
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"out: {path} is not a readable manifest: {exc}") from None
        differ = [k for k in manifest if old.get(k) != manifest[k]]
        if differ:
            k = differ[0]
            raise ValueError(
                f"out: {out} holds explanations of another run ({k}: {old.get(k)!r:.80} here, "
                f"{manifest[k]!r:.80} now); use another out folder to start a new one"
            )
        return
    atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())


# ---- reading back ------------------------------------------------------------------------
def load_explanations(out: Union[str, Path]) -> tuple[list[str], Explanation]:
    """Every shard of ``out`` in plan order as (keys, one :class:`Explanation`); heatmaps
    and class maps at their stored size and dtype. Meant for outputs that fit in memory —
    larger ones are read shard by shard with pyarrow or ``ray.data.read_parquet``."""
    pq = require("pyarrow.parquet")
    folder = Path(out)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"out: {folder} holds no {MANIFEST}: not an explain_dataset output")
    manifest = json.loads(path.read_text())
    files = [folder / _PART.format(i) for i in range(int(manifest["n_shards"]))]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise ValueError(f"out: {len(absent)} shards are not written yet ({absent[:4]}…)")
    tables = [pq.read_table(f) for f in files]
    shapes = json.loads(tables[0].schema.metadata[b"pyconcepts"])["shapes"]
    table = require("pyarrow").concat_tables(tables)

    def column(name: str, shape: Sequence[int] = ()) -> Optional[torch.Tensor]:
        if name not in table.column_names:
            return None
        flat = table[name].combine_chunks()
        if require("pyarrow").types.is_fixed_size_list(flat.type):
            flat = flat.flatten()
        values = flat.to_numpy(zero_copy_only=False)
        return torch.from_numpy(np.array(values).reshape(len(table), *shape))

    n_concepts, n_classes = len(manifest["concept_names"]), len(manifest["class_names"])
    result = Explanation(
        method=manifest["method"],
        layer=manifest["layer"],
        concept_names=manifest["concept_names"],
        concept_scores=_required(column("concept_scores", (n_concepts,))),
        logits=_required(column("logits", (n_classes,))),
        targets=_required(column("target")),
        class_names=manifest["class_names"],
        heatmaps=column("heatmaps", shapes.get("heatmaps", ())),
        heatmap_concepts=column("heatmap_concepts", shapes.get("heatmaps", ())[:1]),
        class_maps=column("class_map", shapes.get("class_map", ())),
    )
    return [str(k) for k in table["key"].to_pylist()], result


def _required(value: Optional[torch.Tensor]) -> torch.Tensor:
    if value is None:
        raise ValueError("out: a shard lacks one of the columns every shard has")
    return value


# ---- small helpers -----------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _explainer_digest(path: Path) -> str:
    """A digest of a saved explainer's content (its documents and tensors): the file's bytes
    are not enough, safetensors writes the header's metadata in no fixed order."""
    tensors, documents = load_file(path, kind="explainer")
    h = hashlib.sha256(json.dumps(documents, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _floats(values: Optional[Sequence[float]]) -> Optional[list[float]]:
    return None if values is None else [float(v) for v in values]


def _size_or_none(value: Any, name: str) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ValueError(f"{name}: expected (height, width) of two ints >= 1, got {value!r}")
    return int(value[0]), int(value[1])


__all__ = ["DatasetRun", "explain_dataset", "load_explanations"]
