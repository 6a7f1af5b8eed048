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
