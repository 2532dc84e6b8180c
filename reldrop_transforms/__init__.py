"""reldrop_transforms: Relevance-driven Input Dropout (RelDrop) as torchvision / PyG batch transforms."""

from . import attribution, functional, transforms
from .loaders import RelevanceCollate, RelevanceLoader
from .transforms import RelevanceDropout2d, RelevanceErasing2d

__version__ = "0.1.0"

__all__ = [
    "RelevanceDropout2d",
    "RelevanceDropout3d",
    "RelevanceErasing2d",
    "RelevanceErasing3d",
    "RelevanceCollate",
    "RelevanceLoader",
    "attribution",
    "functional",
    "transforms",
]


def __getattr__(name: str):
    if name in ("RelevanceDropout3d", "RelevanceErasing3d"):  # imports torch_geometric: only when asked for
        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
