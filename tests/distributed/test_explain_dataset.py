"""Dataset explanation on Ray Data: equal to explaining in one process, equal after a worker
dies mid-run, resumable, and the same from a folder, a parquet file and an ONNX export."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from pyconcepts.data import ConceptWorld
from pyconcepts.data.images import decode_image, to_batch
from pyconcepts.distributed import explain_dataset, load_explanations
from pyconcepts.explainers import MACE
from pyconcepts.export import OnnxExplainer

pytest.importorskip("ray", reason="Ray is not installed (the [distributed] extra)")
pytest.importorskip("pyarrow", reason="pyarrow is not installed (the [distributed] extra)")

N_IMAGES, SHARD, BATCH = 26, 8, 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """26 concept-world images as PNG files in two subfolders."""
    root = tmp_path_factory.mktemp("images")
    images = ConceptWorld(N_IMAGES, seed=11).image(slice(None))
    for i, x in enumerate(images):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        pixels = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(sub / f"img{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def clean(ray_cluster: Any, quick_fitted: dict, folder: Path, tmp_path_factory: Any) -> Path:
    out = tmp_path_factory.mktemp("clean")
    run = explain_dataset(quick_fitted["mace"], folder, out, shard_size=SHARD, batch_size=BATCH)
    assert (run.n_images, run.n_shards, run.written, run.skipped) == (26, 4, [0, 1, 2, 3], [])
    assert run.images_per_worker_second > 0 and run.busy_seconds <= 2 * run.seconds
    return out


def _reference(explainer: Any, folder: Path) -> tuple[list[str], Any]:
    """The same images explained in this process, shard by shard, batch by batch."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    images = to_batch([decode_image(folder / f, (64, 64)) for f in files])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker
    try:
        parts = [
            explainer.explain(images[lo : min(lo + BATCH, s + SHARD)])
            for s in range(0, len(files), SHARD)
            for lo in range(s, min(s + SHARD, len(files)), BATCH)
        ]
    finally:
        torch.set_num_threads(threads)
    return files, parts


def _tables(out: Path) -> list[Any]:
    import pyarrow.parquet as pq

    return [pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))]


def test_equals_one_process(clean: Path, quick_fitted: dict, folder: Path) -> None:
    keys, result = load_explanations(clean)
    files, parts = _reference(quick_fitted["mace"], folder)
    assert keys == files
    assert result.method == "mace" and len(result) == N_IMAGES
    assert result.heatmaps is not None and float(result.heatmaps.abs().sum()) > 0
    for name in ("concept_scores", "logits", "targets", "heatmaps", "heatmap_concepts"):
        expected = torch.cat([getattr(p, name) for p in parts])
        assert torch.equal(getattr(result, name), expected), name
    maps = torch.cat([torch.stack([p.class_map(i) for i in range(len(p))]) for p in parts])
    assert torch.equal(result.class_maps, maps)
    manifest = json.loads((clean / "_manifest.json").read_text())
    assert manifest["n_images"] == N_IMAGES and manifest["method"] == "mace"


class CrashingMACE(MACE):
    """MACE whose worker process dies (os._exit) at the third explain call of a run, once."""

    folder: ClassVar[str] = ""

    def explain(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        calls = Path(self.folder) / "calls"
        with calls.open("a") as f:
            f.write("x")
        if calls.stat().st_size >= 3:
            try:
                os.close(os.open(Path(self.folder) / "crashed", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().explain(images, *args, **kwargs)


def test_a_worker_killed_mid_run_changes_nothing(
    ray_cluster: Any, quick_fitted: dict, folder: Path, clean: Path, tmp_path: Path
) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    fitted = quick_fitted["mace"]
    crashing = CrashingMACE(fitted.model, **fitted.get_config())
    crashing.__dict__.update({k: v for k, v in vars(fitted).items() if k != "model"})
    CrashingMACE.folder = str(tmp_path)
    out = tmp_path / "out"
    run = explain_dataset(crashing, folder, out, shard_size=SHARD, batch_size=BATCH)
    assert (tmp_path / "crashed").exists()  # a worker did die
    assert run.written == [0, 1, 2, 3]
    got, want = _tables(out), _tables(clean)
    assert [len(t) for t in got] == [len(t) for t in want] == [8, 8, 8, 2]
    for a, b in zip(got, want):
        assert a.equals(b)
    assert not list(out.glob(".part-*"))  # no temporary file left


def test_resume_skips_written_shards(
    ray_cluster: Any, quick_fitted: dict, folder: Path, clean: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(clean, out)
    (out / "part-000002.parquet").unlink()
    (out / ".part-000002.parquet.0123456789ab.tmp").write_bytes(b"half a shard")
    run = explain_dataset(quick_fitted["mace"], folder, out, shard_size=SHARD, batch_size=BATCH)
    assert (run.written, run.skipped, run.images_written) == ([2], [0, 1, 3], 8)
    assert all(a.equals(b) for a, b in zip(_tables(out), _tables(clean)))
    assert not list(out.glob(".part-*"))
    again = explain_dataset(quick_fitted["mace"], folder, out, shard_size=SHARD, batch_size=BATCH)
    assert (again.written, again.skipped) == ([], [0, 1, 2, 3])


def test_another_run_on_the_same_folder_is_refused(
    quick_fitted: dict, folder: Path, clean: Path
) -> None:
    with pytest.raises(ValueError, match=r"holds explanations of another run"):
        explain_dataset(quick_fitted["mace"], folder, clean, shard_size=4, batch_size=BATCH)
    with pytest.raises(ValueError, match=r"another run \(explainer_sha256"):
        explain_dataset(quick_fitted["ibd"], folder, clean, shard_size=SHARD)


def test_parquet_source_and_onnx_export(
    ray_cluster: Any, quick_fitted: dict, quick_exports: dict, folder: Path, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.rglob("*.png"))
    table = pa.table({
        "id": [f"img-{i}" for i in range(len(files))],
        "image": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "images.parquet", row_group_size=7)
    out = tmp_path / "onnx"
    run = explain_dataset(quick_exports["mace"], tmp_path / "images.parquet", out,
                          shard_size=SHARD, batch_size=BATCH, key_column="id",
                          heatmap_size=(16, 16), heatmap_dtype="float16")  # fmt: skip
    assert run.n_shards == 4
    keys, result = load_explanations(out)
    assert keys == list(table["id"].to_pylist())
    served = OnnxExplainer(quick_exports["mace"])
    images = to_batch([decode_image(f, (64, 64)) for f in files])
    expected = served.explain(images)
    assert torch.allclose(result.concept_scores, expected.concept_scores, atol=1e-5)
    assert torch.equal(result.targets, expected.targets)
    assert result.heatmaps is not None and result.heatmaps.dtype == torch.float16
    pooled = torch.nn.functional.adaptive_avg_pool2d(expected.heatmaps, (16, 16))
    assert torch.allclose(result.heatmaps.float(), pooled, atol=1e-2, rtol=1e-2)


def test_argument_errors(quick_fitted: dict, folder: Path, tmp_path: Path) -> None:
    ibd = quick_fitted["ibd"]
    with pytest.raises(ValueError, match="shard_size"):
        explain_dataset(ibd, folder, tmp_path, shard_size=0)
    with pytest.raises(ValueError, match="heatmap_dtype"):
        explain_dataset(ibd, folder, tmp_path, heatmap_dtype="int8")
    with pytest.raises(ValueError, match=r"source: no \.png"):
        explain_dataset(ibd, tmp_path, tmp_path / "out")
    with pytest.raises(TypeError, match="explainer: expected a fitted ConceptExplainer"):
        explain_dataset(object(), folder, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"image_column: .* has no column 'pixels'"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "t.parquet")
        explain_dataset(ibd, tmp_path / "t.parquet", tmp_path / "o", image_column="pixels")


def test_cli(ray_cluster: Any, quick_exports: dict, folder: Path, tmp_path: Path,
             capsys: Any) -> None:  # fmt: skip
    from pyconcepts.cli import main

    args = [
        "explain-dataset",
        str(folder),
        "--out",
        str(tmp_path / "out"),
        "--json",
        "--onnx",
        str(quick_exports["mace"]),
        "--shard-size",
        "10",
        "--heatmap-size",
        "8,8",
    ]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["images"], doc["shards"], doc["written"], doc["skipped"]) == (26, 3, [0, 1, 2], [])
    assert main(args) == 0  # a second run finds every shard written
    assert json.loads(capsys.readouterr().out)["skipped"] == [0, 1, 2]
    keys, result = load_explanations(tmp_path / "out")
    assert len(keys) == 26 and result.heatmaps is not None and result.heatmaps.shape[-2:] == (8, 8)
    assert main([*args[:-2], "--heatmap-size", "4,4"]) == 2  # another run on the same folder
    assert "another run" in capsys.readouterr().err
    assert main(["explain-dataset", str(folder), "--out", str(tmp_path / "x"),
                 "--explainer", str(tmp_path / "none.pcx")]) == 2  # fmt: skip
    assert "--method" in capsys.readouterr().err
