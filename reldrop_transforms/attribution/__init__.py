"""LRP attribution of the current model, and the model-state safety it relies on."""

from ._api import BACKENDS, RelevanceBackendWarning, relevance, relevance_graph
from ._composites import composite_names
from ._state import preserved_model_state, unwrap_model

__all__ = ["relevance", "relevance_graph", "BACKENDS", "RelevanceBackendWarning", "composite_names", "preserved_model_state", "unwrap_model"]
