"""OnnxExplainer loads only our own, self-contained exports: every other file is refused with a
LoadError that says why, before onnxruntime ever sees it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from pyconcepts.errors import LoadError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from pyconcepts.export import OnnxExplainer  # noqa: E402
from pyconcepts.export import onnx as export  # noqa: E402


@pytest.fixture(scope="module")
def exports(quick_exports: dict[str, Path]) -> dict[str, Path]:
    """One export per method (quick configurations, untrained models)."""
    return quick_exports


def _ops(model: Any) -> set[str]:
    return {n.op_type for g in export._graphs(model.graph) for n in g.node}


def test_every_method_exports_allowed_ops_only_and_loads(exports: dict[str, Path]) -> None:
    used: set[str] = set()
    for method, path in exports.items():
        used |= _ops(onnx.load(path))
        assert OnnxExplainer(path).method == method
    assert used <= export.EXPORTED_OPS, sorted(used - export.EXPORTED_OPS)


def test_exports_pass_the_full_checker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    check = onnx.checker.check_model
    monkeypatch.setattr(
        onnx.checker, "check_model", lambda m, **kw: (calls.append(kw), check(m, **kw))
    )
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten())
    export.export_module(model, tmp_path / "m.onnx", torch.rand(1, 3, 4, 4), ["logits"])
    assert calls == [{"full_check": True}]


def test_only_the_batch_axis_of_an_output_is_dynamic(exports: dict[str, Path]) -> None:
    """Outputs of fixed size (heatmaps after Resize, scores after Flatten) are declared so."""
    for method, path in exports.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for output in session.get_outputs():
            batch, *rest = output.shape
            assert batch == "batch", (method, output.name, output.shape)
            assert all(isinstance(d, int) and d > 0 for d in rest), (method, output.name, rest)


def test_export_prints_no_tracer_warning(
    quick_fitted: dict[str, Any], tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    warnings.simplefilter("always")
    quick_fitted["srae"].export_onnx(tmp_path / "srae.onnx")  # its graph branches on shapes
    tracer = [w for w in recwarn if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer, [str(w.message) for w in tracer]


@pytest.mark.parametrize(
    "umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_an_export_has_the_mode_of_a_normal_write(tmp_path: Path, umask: int, mode: int) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten())
    old = os.umask(umask)
    try:
        path = export.export_module(model, tmp_path / "m.onnx", torch.rand(1, 3, 4, 4), ["x"])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


@pytest.fixture
def tampered(exports: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Writes an edited copy of the MACE export; no onnxruntime session may be created from it."""

    def no_session(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an onnxruntime session was created for a refused file")

    monkeypatch.setattr(ort, "InferenceSession", no_session)

    def make(edit: Callable[[Any], Any]) -> Path:
        model = onnx.load(exports["mace"])
        edit(model)
        path = tmp_path / "tampered.onnx"
        path.write_bytes(model.SerializeToString())
        return path

    return make


def _set_meta(key: str, value: str | None) -> Callable[[Any], None]:
    def edit(model: Any) -> None:
        kept = [(e.key, e.value) for e in model.metadata_props if e.key != key]
        del model.metadata_props[:]
        for k, v in [*kept, *([(key, value)] if value is not None else [])]:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v

    return edit


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pyconcepts_method", None, "pyconcepts_method"),
        ("pyconcepts_method", "", "pyconcepts_method"),
        ("pyconcepts_method", "../../x", "pyconcepts_method"),
        ("pyconcepts_version", None, "pyconcepts_version"),
        ("pyconcepts_outputs", '["logits"]', "do not match"),
        ("pyconcepts_outputs", "[", "corrupt JSON"),
        ("pyconcepts_concepts", '{"a": 1}', "list of strings"),
        ("pyconcepts_classes", "[" * 100_000, "corrupt JSON"),
    ],
)
def test_missing_or_wrong_metadata_is_refused(tampered: Callable, key: str, value: str | None,
                                              message: str) -> None:  # fmt: skip
    with pytest.raises(LoadError, match=message):
        OnnxExplainer(tampered(_set_meta(key, value)))


def _relu_to(op_type: str, domain: str = "") -> Callable[[Any], None]:
    def edit(model: Any) -> None:
        node = next(n for n in model.graph.node if n.op_type == "Relu")
        node.op_type, node.domain = op_type, domain

    return edit


def _external(location: str, where: str) -> Callable[[Any], None]:
    """Moves one tensor's data 'outside the file': an initializer, a Constant node's value, or
    a Constant inside an If node's branch."""

    def point_outside(tensor: Any) -> None:
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location

    def edit(model: Any) -> None:
        if where == "initializer":
            point_outside(max(model.graph.initializer, key=lambda t: len(t.raw_data)))
            return
        value = onnx.numpy_helper.from_array(torch.ones(3).numpy(), "c")
        point_outside(value)
        const = onnx.helper.make_node("Constant", [], ["c_out"], value=value)
        if where == "constant":
            model.graph.node.append(const)
            return
        branch = onnx.helper.make_graph([const], "branch", [], [
            onnx.helper.make_tensor_value_info("c_out", onnx.TensorProto.FLOAT, [3])])  # fmt: skip
        model.graph.node.append(onnx.helper.make_node(
            "If", ["cond"], ["if_out"], then_branch=branch, else_branch=branch))  # fmt: skip

    return edit


def _function(model: Any) -> None:
    identity = onnx.helper.make_node("Identity", ["x"], ["y"])
    opset = onnx.helper.make_opsetid("", 18)
    function = onnx.helper.make_function("evil", "f", ["x"], ["y"], [identity], [opset])
    model.functions.append(function)


def _domain_import(model: Any) -> None:
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def _second_input(model: Any) -> None:
    model.graph.input.append(onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1]))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_relu_to("Selu"), r"operators \['Selu'\] outside the allowed set"),
        (_relu_to("Gelu", "com.microsoft"), "in domain 'com.microsoft'"),
        (_domain_import, "domains \\['com.microsoft'\\]"),
        (_function, "local functions"),
        (_second_input, "one graph input 'images'"),
        (_external("../../etc/passwd", "initializer"), r"external file \('\.\./\.\./etc/passwd'\)"),
        (_external("/etc/shadow", "constant"), "external file"),
        (_external("../secret.bin", "subgraph"), "external file"),
    ],
)
def test_foreign_operators_functions_and_external_data_are_refused(
    tampered: Callable, edit: Callable[[Any], None], message: str
) -> None:
    with pytest.raises(LoadError, match=message):
        OnnxExplainer(tampered(edit))


def test_extra_ops_widen_the_allowlist_explicitly(tampered: Callable) -> None:
    path = tampered(_relu_to("Selu"))
    with pytest.raises(LoadError, match="extra_ops"):
        OnnxExplainer(path)
    # widened, every check passes and loading reaches the (here forbidden) session creation
    with pytest.raises(LoadError, match="session was created"):
        OnnxExplainer(path, extra_ops=["Selu"])


def test_size_limit_and_junk(exports: dict[str, Path], tmp_path: Path) -> None:
    size = exports["mace"].stat().st_size
    with pytest.raises(LoadError, match=f"{size} bytes is over the limit of 1000 bytes"):
        OnnxExplainer(exports["mace"], max_bytes=1000)
    assert OnnxExplainer(exports["mace"], max_bytes=size).method == "mace"
    for junk in (b"", b"not onnx", b"\x08" * 64, exports["mace"].read_bytes()[: size // 2]):
        (tmp_path / "junk.onnx").write_bytes(junk)
        with pytest.raises(LoadError):
            OnnxExplainer(tmp_path / "junk.onnx")


def test_export_refuses_weights_beyond_protobuf_and_warns_above_max_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Limits shrunk to the test module's 1,960 bytes of weights (a real one needs 2 GiB)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10)).eval()
    assert export.weight_bytes(model) == (48 * 10 + 10) * 4
    monkeypatch.setattr(export, "PROTOBUF_LIMIT_BYTES", 1000)
    with pytest.raises(ValueError, match=r"1,960 bytes.*classes="):
        export.export_module(model, tmp_path / "m.onnx", torch.rand(1, 3, 4, 4), ["x"])
    assert os.listdir(tmp_path) == []  # refused before any file was written
    monkeypatch.setattr(export, "PROTOBUF_LIMIT_BYTES", 2**31 - 1)
    monkeypatch.setattr(export, "MAX_ONNX_BYTES", 1000)
    with pytest.warns(UserWarning, match=r"max_bytes=\d+"):
        path = export.export_module(model, tmp_path / "m.onnx", torch.rand(1, 3, 4, 4), ["x"])
    assert path.exists()


def test_export_counts_only_the_weights_the_forward_pass_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trained-but-unused part (MACE's dense-layer decoder) is not exported, so it does not
    count towards the limits; a view of a parameter counts as the parameter."""

    class Partly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = torch.nn.Linear(48, 10)
            self.scale = torch.nn.Parameter(torch.ones(10))
            self.unused = torch.nn.Linear(100, 100)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x.flatten(1)) * self.scale[None, :]

    model, example = Partly().eval(), torch.rand(1, 3, 4, 4)
    assert export.weight_bytes(model) == (490 + 10 + 10100) * 4
    assert export.weight_bytes(model, example) == (490 + 10) * 4
    monkeypatch.setattr(export, "PROTOBUF_LIMIT_BYTES", 4000)
    path = export.export_module(model, tmp_path / "m.onnx", example, ["x"])
    assert path.stat().st_size < 4000
