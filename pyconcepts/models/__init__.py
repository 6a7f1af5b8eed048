"""Models: the concept-world model zoo and the FeatureExtractor for any torch CNN."""

from pyconcepts.models.features import FeatureExtractor, resolve_layer
from pyconcepts.models.zoo import ZOO, accuracy, available, cache_dir, cw_resnet, cw_vgg, load

__all__ = [
    "ZOO",
    "FeatureExtractor",
    "accuracy",
    "available",
    "cache_dir",
    "cw_resnet",
    "cw_vgg",
    "load",
    "resolve_layer",
]
