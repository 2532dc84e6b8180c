"""LRP attribution of the current model, and the model-state safety it relies on.

:class:`Attributor` is the one attribution path (every transform holds one); :func:`relevance` and
:func:`relevance_graph` are its one-call forms. The rules are written down in :mod:`._rules`.
"""

from .._checks import BACKENDS
from ._api import relevance, relevance_graph
from ._attributor import (
    Attributor,
    RelevanceBackendWarning,
    check_not_in_worker,
    model_lock,
)
from ._composites import composite_names
from ._state import model_device, preserved_model_state, unwrap_model

__all__ = ["Attributor", "relevance", "relevance_graph", "BACKENDS", "RelevanceBackendWarning", "composite_names",
           "preserved_model_state", "unwrap_model", "model_device", "check_not_in_worker", "model_lock"]
