"""Pure tensor kernels: relevance normalisation, the RelDrop mask rule, fills and point removal. No model."""

from ._erasing import (
    ball_draws,
    box_mask,
    erasing_draws,
    relevance_ball_mask,
    relevance_erasing_mask,
    relevant_centres,
    sample_erasing_sizes,
)
from ._mask import fill_dropped, noise_dtype, normalize_relevance, relevance_dropout_mask, sample_coins, uniform_like
from ._points import FILLS, fill_points, is_node_attribute, keep_least_relevant, remove_points

__all__ = [
    "normalize_relevance",
    "relevance_dropout_mask",
    "fill_dropped",
    "sample_coins",
    "uniform_like",
    "noise_dtype",
    "keep_least_relevant",
    "fill_points",
    "remove_points",
    "is_node_attribute",
    "FILLS",
    "relevance_erasing_mask",
    "sample_erasing_sizes",
    "relevant_centres",
    "box_mask",
    "relevance_ball_mask",
    "erasing_draws",
    "ball_draws",
]
