"""Models: the concept-world model zoo, pretrained ImageNet CNNs, the FeatureExtractor and
default layers discovered from any torch CNN."""

from pyconcepts.models.features import FeatureExtractor, LayerAddress, parse_layer, resolve_layer
from pyconcepts.models.imagenet import IMAGENET_MODELS, ImagePreprocessing
from pyconcepts.models.layers import LayerCall, ModelLayers, describe, discover_layers
from pyconcepts.models.zoo import ZOO, accuracy, available, cache_dir, cw_resnet, cw_vgg, load

__all__ = [
    "IMAGENET_MODELS",
    "ZOO",
    "FeatureExtractor",
    "ImagePreprocessing",
    "LayerAddress",
    "LayerCall",
    "ModelLayers",
    "accuracy",
    "available",
    "cache_dir",
    "cw_resnet",
    "cw_vgg",
    "describe",
    "discover_layers",
    "load",
    "parse_layer",
    "resolve_layer",
]
