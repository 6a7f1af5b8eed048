"""discover_layers / describe on the zoo models and on small hand-built networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyconcepts.models import FeatureExtractor, ModelLayers, describe, discover_layers


class SharedActivation(nn.Module):
    """One ReLU6 module used twice per forward pass (as EfficientNet's blocks do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_zoo_models_agree_with_their_zoo_info(name, request):
    model = request.getfixturevalue(name)
    layers = discover_layers(model, torch.rand(2, 3, 64, 64))
    classifier = {"vgg": "fc2", "resnet": "fc"}[name]
    assert layers == ModelLayers(
        feature_map=model.zoo_info["feature_layer"],
        classifier=classifier,
        penultimate=f"{classifier}:input",
        n_classes=10,
        input_size=(64, 64),
    )
    feats = FeatureExtractor(model, [layers.feature_map, layers.penultimate])(
        torch.rand(2, 3, 64, 64)
    )
    assert feats[layers.feature_map].dim() == 4 and feats[layers.penultimate].dim() == 2


def test_non_square_inputs_and_the_model_is_left_as_it_was(resnet):
    layers = discover_layers(resnet, torch.rand(3, 3, 48, 80))
    assert (layers.feature_map, layers.input_size) == ("layer3", (48, 80))
    bn_model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 2),
    )
    bn_model.train()
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    discover_layers(bn_model, torch.rand(2, 3, 8, 8))
    assert bn_model.training and all(m.training for m in bn_model.modules())
    assert all(torch.equal(before[k], v) for k, v in bn_model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in bn_model.modules())


def test_a_shared_activation_is_named_by_its_call():
    model = SharedActivation().eval()
    x = torch.rand(1, 3, 8, 8)
    layers = discover_layers(model, x)
    assert (layers.feature_map, layers.classifier, layers.n_classes) == ("act@1", "fc", 5)
    rows = {r.name: r for r in describe(model, x)}
    assert rows["act@0"].calls == 2 and rows["act@0"].shape == (1, 4, 8, 8)
    assert rows["act@1"].shape == (1, 6, 4, 4) and rows["fc"] == ("fc", 1, (1, 5))
    feats = FeatureExtractor(model, [layers.feature_map])(x)
    assert feats["act@1"].shape == (1, 6, 4, 4)


def test_a_1x1_conv_head_is_the_classifier():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ).eval()  # fmt: skip
    layers = discover_layers(model, torch.rand(1, 3, 6, 6))
    assert (layers.feature_map, layers.classifier, layers.penultimate) == ("1", "2", "2:input")


def test_the_activation_after_the_last_conv_is_preferred_to_later_pooling(vgg):
    # cw-vgg: relu4 (8x8) is followed by pool4 (4x4): the map is the activation, not the pool
    rows = {r.name: r.shape for r in describe(vgg, torch.rand(1, 3, 64, 64))}
    assert rows["features.pool4"] == (1, 128, 4, 4)
    assert discover_layers(vgg, torch.rand(1, 3, 64, 64)).feature_map == "features.relu4"
    # without a ReLU-family activation, the last spatial output is taken
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.SiLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)
    )
    assert discover_layers(model.eval(), torch.rand(1, 3, 8, 8)).feature_map == "2"


def test_clear_errors():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    with pytest.raises(ValueError, match=r"no layer before the classifier '1' outputs a spatial"):
        discover_layers(flat, torch.rand(1, 3, 4, 4))
    no_linear = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"no nn.Linear .* produces the 5 logits(.|\n)*  1  x1"):
        discover_layers(no_linear, torch.rand(1, 3, 6, 6))
    with pytest.raises(ValueError, match=r"expected logits \[B, n_classes\].*\(1, 5, 4, 4\)"):
        discover_layers(nn.Sequential(nn.Conv2d(3, 5, 3)), torch.rand(1, 3, 6, 6))
    with pytest.raises(TypeError, match=r"example: expected a torch\.Tensor"):
        discover_layers(flat, [[0.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"example: expected a batch \[B,C,H,W\]"):
        discover_layers(flat, torch.rand(3, 4, 4))
    with pytest.raises(TypeError, match=r"model: expected an nn\.Module"):
        describe("model", torch.rand(1, 3, 4, 4))  # type: ignore[arg-type]
