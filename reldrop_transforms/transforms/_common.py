"""Steps shared by the image and point transforms: argument checks, coins and attribution of the selected samples."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn

from ..attribution import BACKENDS, relevance
from ..attribution._api import check_finite
from ..functional import sample_coins


def check_model(model: Any) -> None:
    """The model of a relevance transform is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model should be a torch.nn.Module, but got {type(model).__name__}.")


def check_common(model: Any, backend: Any, generator: Any, epsilon: Any) -> None:
    """Argument checks shared by every relevance transform."""
    check_model(model)
    if backend not in BACKENDS:
        raise ValueError(f"backend should be one of {BACKENDS}, but got {backend!r} instead.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator should be a torch.Generator or None, but got {type(generator).__name__}.")
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon >= 0:
        raise ValueError(f"epsilon should be a number >= 0, but got {epsilon!r} instead.")


def attribute_selected(owner: Any, inputs: Tensor, labels: Tensor | None, channel_dim: int):
    """Draw the per-sample coins, attribute the selected samples, and sum the relevance over ``channel_dim``.

    Returns ``(relevance, index)``: ``index`` is ``None`` when every sample is selected (``p = 1``), else the
    selected positions (one synchronisation); ``relevance`` is ``None`` when no sample is selected.
    """
    batch_size = inputs.shape[0]
    coins = sample_coins(batch_size, owner.p, device=inputs.device, generator=owner.generator)
    index = None if owner.p >= 1.0 else coins.nonzero().flatten()
    if index is not None and index.numel() == 0:
        return None, index
    selected = inputs if index is None else inputs.index_select(0, index)
    targets = None
    if labels is not None:
        targets = labels.as_subclass(Tensor).to(inputs.device, non_blocking=True)
        if index is not None:
            targets = targets.index_select(0, index)
    rel = relevance(owner.model, selected, targets, composite=owner.composite, epsilon=owner.epsilon,
                    backend=owner.backend, dtype=getattr(owner, "dtype", None),
                    check_finite_values=False)  # checked here, so that the error names batch indices
    check_finite(rel, type(owner).__name__, index)
    return rel.sum(channel_dim), index


def scatter_rows(rows: Tensor, index: Tensor | None, batch_size: int) -> Tensor:
    """``rows`` of the selected samples placed into a ``False`` mask of the whole batch."""
    if index is None:
        return rows
    full = torch.zeros((batch_size, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    return full.index_copy_(0, index, rows)
