"""reldrop_transforms: Relevance-driven Input Dropout (RelDrop) as torchvision / PyG batch transforms."""

from . import attribution, functional, transforms
from .loaders import RelevanceCollate, RelevanceLoader
from .transforms import RelevanceDropout2d

__version__ = "0.1.0"

__all__ = [
    "RelevanceDropout2d",
    "RelevanceCollate",
    "RelevanceLoader",
    "attribution",
    "functional",
    "transforms",
]
