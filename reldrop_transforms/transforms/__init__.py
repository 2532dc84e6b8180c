"""Batch transforms: RelevanceDropout2d (torchvision ``transforms.v2``)."""

from ._dropout2d import RelevanceDropout2d

__all__ = ["RelevanceDropout2d"]
