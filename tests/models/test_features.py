import pytest
import torch
from torch import nn

from pyconcepts.models import FeatureExtractor, cw_resnet, cw_vgg, resolve_layer


def test_captures_named_layers_and_leaves_no_hooks():
    model = cw_vgg().eval()
    x = torch.rand(3, 3, 64, 64)
    fx = FeatureExtractor(model, ["features.relu4", model.fc1])
    feats, out = fx(x, return_output=True)
    assert feats["features.relu4"].shape == (3, 128, 8, 8)
    assert torch.allclose(feats["fc1"], model.fc1(model.flatten(model.features(x))), atol=1e-6)
    assert torch.allclose(out, model(x), atol=1e-6)
    assert all(not m._forward_hooks for m in model.modules())


def test_stops_early_without_the_output_and_detaches_by_default():
    model = cw_resnet().eval()
    feats = FeatureExtractor(model, ["layer1"])(torch.rand(2, 3, 64, 64))
    assert feats["layer1"].shape == (2, 32, 16, 16) and not feats["layer1"].requires_grad
    kept = FeatureExtractor(model, ["layer1"], detach=False)(torch.rand(2, 3, 64, 64))
    assert kept["layer1"].requires_grad


def test_inplace_relu_does_not_change_captured_outputs():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.zero_()
    x = torch.ones(1, 1, 2, 2)
    feats = FeatureExtractor(model, ["0"])(x, return_output=True)[0]
    assert float(feats["0"].max()) == -1.0  # the conv's output before the in-place ReLU


def test_wrong_layer_names_say_what_exists():
    model = cw_vgg()
    with pytest.raises(ValueError, match=r"did you mean \['features.relu4'"):
        resolve_layer(model, "features.relu44")
    with pytest.raises(ValueError, match="not part of the model"):
        resolve_layer(model, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="layers"):
        FeatureExtractor(model, "fc1")
    with pytest.raises(ValueError, match="empty"):
        FeatureExtractor(model, [])
    with pytest.raises(TypeError, match="model"):
        FeatureExtractor("model", ["fc1"])  # type: ignore[arg-type]


class _Twice(nn.Module):
    """A shared activation used twice, then a layer that records whether it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(3, 4), nn.Linear(4, 4), nn.ReLU()
        self.head = nn.Linear(4, 2)
        self.head_ran = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.lin2(self.act(self.lin1(x))))
        self.head_ran += 1
        return self.head(h)


def test_calls_of_a_shared_module_are_addressed_with_at_k():
    torch.manual_seed(0)
    model = _Twice()
    x = torch.randn(5, 3)
    feats = FeatureExtractor(model, ["act@0", "act@1", "act@1:input", "head:input"])(x)
    first = torch.relu(model.lin1(x))
    second_in = model.lin2(first)
    torch.testing.assert_close(feats["act@0"], first)
    torch.testing.assert_close(feats["act@1:input"], second_in)
    torch.testing.assert_close(feats["act@1"], torch.relu(second_in))
    torch.testing.assert_close(feats["head:input"], torch.relu(second_in))
    assert list(feats) == ["act@0", "act@1", "act@1:input", "head:input"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_plain_name_of_a_module_that_runs_twice_is_refused():
    model = _Twice()
    with pytest.raises(ValueError, match=r"'act' ran 2 times .* 'act@0' \.\.\. 'act@1'"):
        FeatureExtractor(model, ["act"])(torch.rand(1, 3))
    with pytest.raises(ValueError, match=r"'act@0:input' \.\.\. 'act@1:input'"):
        FeatureExtractor(model, ["act:input"])(torch.rand(1, 3))
    with pytest.raises(ValueError, match=r"'act@2' asks for call 2 .* ran 2 time"):
        FeatureExtractor(model, ["act@2"])(torch.rand(1, 3))


def test_the_forward_pass_stops_early_only_when_every_call_is_named():
    model = _Twice()
    FeatureExtractor(model, ["act@0"])(torch.rand(1, 3))
    assert model.head_ran == 0  # stopped inside the first activation
    FeatureExtractor(model, ["lin1"])(torch.rand(1, 3))
    assert model.head_ran == 1  # a plain name runs the whole pass to check it runs once


def test_inputs_are_taken_before_an_inplace_module_changes_them():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].weight.copy_(-torch.eye(2))
        model[0].bias.zero_()
    feats = FeatureExtractor(model, ["1:input", "1"])(torch.ones(1, 2))
    assert torch.equal(feats["1:input"], -torch.ones(1, 2))
    assert torch.equal(feats["1"], torch.zeros(1, 2))


def test_the_penultimate_vector_of_the_zoo_vgg(vgg):
    x = torch.rand(2, 3, 64, 64)
    feats = FeatureExtractor(vgg, ["fc2:input", "relu_fc1"])(x)
    torch.testing.assert_close(feats["fc2:input"], feats["relu_fc1"])


def test_layer_syntax_errors_and_canonical_names():
    model = _Twice()
    assert resolve_layer(model, "act@1:input") == ("act@1:input", model.act)
    assert resolve_layer(model, model.head) == ("head", model.head)
    with pytest.raises(ValueError, match=r"'@x'; expected '@k'"):
        resolve_layer(model, "act@x")
    with pytest.raises(ValueError, match=r"no layer named 'actt'.*'name@k'.*Available"):
        resolve_layer(model, "actt@1")
    with pytest.raises(ValueError, match=r"no layer named 'act:output'"):
        resolve_layer(model, "act:output")
