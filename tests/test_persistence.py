import hashlib
import json
import os
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyconcepts import persistence
from pyconcepts.errors import LoadError


def test_round_trip_keeps_tensors_and_documents(tmp_path):
    path = tmp_path / "x.safetensors"
    tensors = {"a": torch.arange(6.0).view(2, 3).t(), "b": torch.tensor([1, 2])}  # non-contiguous
    persistence.save_file(path, tensors, "thing", {"config": {"k": [1, 2]}, "n": 3})
    loaded, docs = persistence.load_file(path, "thing")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    assert docs == {"config": {"k": [1, 2]}, "n": 3}


def test_wrong_kind_missing_file_and_corruption_are_load_errors(tmp_path):
    path = tmp_path / "x.safetensors"
    persistence.save_file(path, {"a": torch.ones(3)}, "thing", {})
    with pytest.raises(LoadError, match="expected a 'other'"):
        persistence.load_file(path, "other")
    with pytest.raises(LoadError, match="no such file"):
        persistence.load_file(tmp_path / "missing", "thing")
    raw = path.read_bytes()
    for bad in (raw[:5], raw[:40], b"\xff" * 8 + raw[8:], raw[:8] + b"[" + raw[9:], b""):
        path.write_bytes(bad)
        with pytest.raises(LoadError):
            persistence.load_file(path, "thing")


def test_other_format_version_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(1)}, path, metadata={"format": "pyconcepts", "format_version": "99"})
    with pytest.raises(LoadError, match="version '99'"):
        persistence.load_file(path, "thing")
    save_file({"a": torch.ones(1)}, path)
    with pytest.raises(LoadError, match="no metadata"):
        persistence.load_file(path, "thing")


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.safetensors"
    persistence.save_file(path, {"a": torch.ones(2)}, "thing", {"v": 1})
    with pytest.raises(TypeError):
        persistence.save_file(path, {"a": torch.ones(2)}, "thing", {"v": object()})
    assert persistence.load_file(path, "thing")[1] == {"v": 1}
    assert os.listdir(tmp_path) == ["x.safetensors"]


def test_json_documents_are_plain_json(tmp_path):
    path = tmp_path / "x.safetensors"
    persistence.save_file(path, {}, "thing", {"d": {"z": 1.5}})
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + n])
    assert json.loads(header["__metadata__"]["json:d"]) == {"z": 1.5}


def test_explainer_documents_of_the_wrong_type_are_a_load_error(tmp_path):
    import torch.nn as nn

    from pyconcepts.explainers import IBD

    path = tmp_path / "odd.pcx"
    documents = {"method": "ibd", "model": [1], "config": {}, "state": {}}
    persistence.save_file(path, {"x": torch.zeros(1)}, kind="explainer", documents=documents)
    with pytest.raises(LoadError, match="corrupt explainer documents"):
        IBD.load(path, model=nn.Linear(2, 2))


@pytest.mark.parametrize(
    "umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_saved_files_have_the_mode_of_a_normal_write(tmp_path, umask, mode):
    """Atomic writes go through a temporary file; it is created with 0o666 less the umask,
    like open(), not mkstemp's 0o600."""
    old = os.umask(umask)
    try:
        persistence.atomic_write_bytes(tmp_path / "a.bin", b"data")
        persistence.save_file(tmp_path / "b.safetensors", {"x": torch.zeros(2)}, "test", {})
    finally:
        os.umask(old)
    for name in ("a.bin", "b.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.safetensors"]


_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool]  # fmt: skip


_SPECS = st.lists(
    st.tuples(
        st.sampled_from(_DTYPES),
        st.lists(st.integers(0, 4), min_size=0, max_size=3),
        st.booleans(),
    ),
    min_size=0,
    max_size=4,
)


def _tensors_of(specs) -> dict[str, torch.Tensor]:
    """Tensors of every dtype, empty and 0-d, transposed (non-contiguous) where 2-d."""
    gen = torch.Generator().manual_seed(len(specs))
    tensors = {}
    for i, (dtype, shape, transposed) in enumerate(specs):
        t = (torch.rand(tuple(shape), generator=gen) * 100).to(dtype)
        tensors[f"t{i}"] = t.t() if transposed and t.dim() == 2 else t
    return tensors


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_SPECS)
def test_files_are_standard_safetensors_both_ways(tmp_path, specs) -> None:
    """Our streamed writer and reader against safetensors' own (an independent oracle): every
    dtype we save, empty and 0-d tensors, non-contiguous inputs."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = _tensors_of(specs)
    ours = tmp_path / "ours.safetensors"
    persistence.save_file(ours, tensors, "thing", {"n": 1})
    with safe_open(str(ours), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t)
        assert f.metadata()["kind"] == "thing"
    theirs = tmp_path / "theirs.safetensors"
    meta = {"format": "pyconcepts", "format_version": "1", "kind": "thing", "json:n": "1"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(theirs), metadata=meta)
    for path in (ours, theirs):
        loaded, docs = persistence.load_file(path, "thing")
        assert docs == {"n": 1} and set(loaded) == set(tensors)
        for name, t in tensors.items():
            assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t)


def test_a_dtype_the_format_cannot_hold_is_refused_before_writing(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"tensors\['z'\]: dtype torch.complex64"):
        persistence.save_file(tmp_path / "x", {"z": torch.zeros(2, dtype=torch.complex64)}, "t", {})
    assert list(tmp_path.iterdir()) == []


def _one_pass_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The documented digest, read plainly: SHA-256 over the metadata but the digest, then each
    tensor's name, dtype, shape and bytes in sorted name order, hashed in one pass."""
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k != "sha256"):
        h.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_SPECS, st.sampled_from([1, 3, 8, 1 << 20]))
def test_the_streamed_digest_is_the_one_pass_digest_at_any_chunk_size(
    tmp_path, specs, chunk
) -> None:
    """Save and load hash chunk by chunk on a second thread: the file's digest equals a one-pass
    hash of the same content, the file's bytes do not depend on the chunk size, and a file
    written with other chunks loads."""
    tensors = _tensors_of(specs)
    reference = tmp_path / "reference.safetensors"
    persistence.save_file(reference, tensors, "thing", {"n": 1})
    path = tmp_path / "chunked.safetensors"
    with mock.patch.object(persistence, "CHUNK_BYTES", chunk):
        persistence.save_file(path, tensors, "thing", {"n": 1})
        loaded, _ = persistence.load_file(reference, "thing")
    assert path.read_bytes() == reference.read_bytes()
    n = int.from_bytes(path.read_bytes()[:8], "little")
    metadata = json.loads(path.read_bytes()[8 : 8 + n])["__metadata__"]
    assert metadata["sha256"] == _one_pass_digest(tensors, metadata)
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], t) for k, t in tensors.items())


def test_a_change_in_any_chunk_fails_the_digest(tmp_path) -> None:
    """One flipped byte in the first, a middle or the last of many chunks is caught."""
    path = tmp_path / "x.safetensors"
    persistence.save_file(path, {"a": torch.arange(64.0), "b": torch.ones(7)}, "thing", {})
    raw = path.read_bytes()
    n = 8 + int.from_bytes(raw[:8], "little")
    with mock.patch.object(persistence, "CHUNK_BYTES", 16):
        persistence.load_file(path, "thing")
        for at in (n, n + 130, len(raw) - 1):
            path.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :])
            with pytest.raises(LoadError, match="checksum mismatch"):
                persistence.load_file(path, "thing")


def test_a_failing_hash_is_raised_not_a_hang() -> None:
    """An error on the hashing thread comes back from ``hexdigest``; updates after it still
    return (the thread drains them) instead of blocking on the full queue."""
    digest = persistence._ThreadedSha256({})
    digest.update(object())  # type: ignore[arg-type]
    for _ in range(20):  # more than the queue holds
        digest.update(b"x")
    with pytest.raises(TypeError):
        digest.hexdigest()
