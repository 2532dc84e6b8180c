"""Pure tensor kernels: relevance normalisation, the RelDrop mask rule and fills. No model in here."""

from ._mask import fill_dropped, normalize_relevance, relevance_dropout_mask, sample_coins, uniform_like

__all__ = ["normalize_relevance", "relevance_dropout_mask", "fill_dropped", "sample_coins", "uniform_like"]
