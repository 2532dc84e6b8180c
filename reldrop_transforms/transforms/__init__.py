"""Batch transforms: RelevanceDropout2d and RelevanceErasing2d (torchvision ``transforms.v2``),
RelevanceDropout3d and RelevanceErasing3d (dense points and PyTorch Geometric).

The 3D transforms are imported on first use: they need torch_geometric, whose import takes seconds.
"""

from ._dropout2d import RelevanceDropout2d
from ._erasing2d import RelevanceErasing2d

__all__ = ["RelevanceDropout2d", "RelevanceErasing2d", "RelevanceDropout3d", "RelevanceErasing3d"]


def __getattr__(name: str):
    if name == "RelevanceDropout3d":
        from ._dropout3d import RelevanceDropout3d

        return RelevanceDropout3d
    if name == "RelevanceErasing3d":
        from ._erasing3d import RelevanceErasing3d

        return RelevanceErasing3d
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
