"""Batch transforms: RelevanceDropout2d (torchvision ``transforms.v2``), RelevanceDropout3d (points, PyG).

``RelevanceDropout3d`` is imported on first use: it needs torch_geometric, whose import takes seconds.
"""

from ._dropout2d import RelevanceDropout2d

__all__ = ["RelevanceDropout2d", "RelevanceDropout3d"]


def __getattr__(name: str):
    if name == "RelevanceDropout3d":
        from ._dropout3d import RelevanceDropout3d

        return RelevanceDropout3d
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
