"""The persistence benchmark: every tool gives the tensors back, peaks are measured, a tiny run."""

import json
import sys

import pytest
import torch

from bench import persistence

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="peak memory is read from /proc")


def test_peak_counts_memory_freed_before_the_call_returns():
    _, seconds, peak = persistence.peak_extra_mib(lambda: bytearray(64 * 2**20).count(1))
    assert seconds >= 0 and peak >= 60  # the buffer is gone when fn returns, its peak is not


def test_touch_faults_in_every_page_of_a_mapped_load(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    path = str(tmp_path / "t.safetensors")
    st.save_file(
        {"a": torch.ones(4 * 2**20), "empty": torch.zeros(0), "b": torch.ones(9).char()}, path
    )
    loaded = st.load_file(path)  # mapped: its pages are read when first touched
    _, _, peak = persistence.peak_extra_mib(lambda: persistence.touch(loaded))
    assert peak >= 15  # the 16 MiB tensor's pages became resident


def test_tiny_run_agrees_and_reports_each_tool(tmp_path, monkeypatch):
    monkeypatch.setattr("bench._results.FOLDER", tmp_path)
    persistence.main(["--mib", "2", "--tensors", "3", "--repeats", "1", "--dir", str(tmp_path)])
    doc = json.loads((tmp_path / "persistence.json").read_text())
    assert all(doc["agreement"].values())
    assert {"pyconcepts", "torch.save"} <= doc["results"].keys()
    for row in doc["results"].values():
        assert row["save_s"] > 0 and row["load_s"] >= 0 and row["load_peak_mib"] >= 0
    assert [p.name for p in tmp_path.iterdir()] == ["persistence.json"]  # the files are removed
