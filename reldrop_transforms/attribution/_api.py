"""``relevance()`` and ``relevance_graph()``: one-call forms of :class:`Attributor`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._attributor import Attributor

__all__ = ["relevance", "relevance_graph"]


def relevance(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    composite="epsilon_flat",
    epsilon: float = 1e-3,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    check_finite_values: bool = True,
) -> Tensor:
    """LRP relevance of ``model`` for a batch, computed in eval mode without touching the training state.

    ``Attributor(model, composite=..., epsilon=..., backend=..., dtype=...)(inputs, targets)``: see
    :class:`Attributor` for the rules, the backends and the guarantees. Gradients are enabled inside even under
    ``torch.no_grad()`` or ``torch.inference_mode()``.

    Args:
        model: A classifier returning logits ``(B, K)``.
        inputs: The batch, on the model's device.
        targets: Class indices ``(B,)``, one-hot or soft labels ``(B, K)`` (the output relevance as given), or
            ``None`` for the predicted class.
        composite: ``"epsilon_flat"`` (the paper's), a zennit registry name such as ``"epsilon_plus_flat"`` or
            ``"epsilon_gamma_box"``, or a zennit ``Composite``.
        epsilon: The Epsilon rule's stabiliser (the paper found 1e-3 best).
        backend: ``"fast"``, ``"zennit"`` or ``"auto"`` (see :class:`Attributor`).
        dtype: Run the attribution under autocast in this dtype, ``torch.bfloat16`` or ``torch.float16``, for a
            float32 model (autocast lowers float32 operations only: a model in another precision is refused);
            ``None`` (default) disables autocast so that it runs in the model's own precision.
        check_finite_values: Raise a ``ValueError`` naming the samples whose relevance is NaN or infinite
            (costs one host-device synchronisation).

    Shape:
        - inputs: (B, *), floating.
        - targets: (B,) integer, or (B, K) floating.
        - output: same as ``inputs``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> relevance(model, torch.randn(2, 3, 2, 2), torch.tensor([0, 2])).shape
        torch.Size([2, 3, 2, 2])
    """
    attributor = Attributor(model, composite=composite, epsilon=epsilon, backend=backend, dtype=dtype)
    return attributor(inputs, targets, check_finite=check_finite_values)


def relevance_graph(
    model: nn.Module,
    data,
    targets: Tensor | None = None,
    *,
    keys: tuple[str, ...] = ("pos", "x"),
    forward_fn: Callable | None = None,
    composite="epsilon_flat",
    epsilon: float = 1e-3,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    check_finite_values: bool = True,
) -> dict[str, Tensor]:
    """LRP relevance of a PyTorch Geometric ``Data``/``Batch`` with respect to its node tensors.

    ``Attributor(model, ...).attribute_graph(data, targets, keys=..., forward_fn=...)``: the node attributes named
    in ``keys`` that the data has (``pos`` is required, ``x`` is used where present) are attributed; see
    :meth:`Attributor.attribute_graph`.

    Args:
        model: A point-cloud classifier returning logits ``(num_graphs, K)``.
        data: A ``torch_geometric.data.Batch`` (or a single ``Data``: one cloud) on the model's device.
        targets: Class indices ``(num_graphs,)``, soft labels ``(num_graphs, K)``, or ``None`` (predicted class).
        keys: Node attributes to attribute.
        forward_fn: ``forward_fn(model, data) -> logits`` for models with other call signatures.

    Returns:
        ``{key: relevance}`` with each relevance of the attribute's shape, for the keys present in ``data``.

    Example:
        >>> from torch_geometric.data import Batch, Data
        >>> from reldrop_transforms.models import PointNet
        >>> model = PointNet(in_channels=5, num_classes=4)  # xyz and two features per point
        >>> batch = Batch.from_data_list([Data(pos=torch.randn(n, 3), x=torch.randn(n, 2), y=torch.tensor([1]))
        ...                               for n in (7, 9)])
        >>> rel = relevance_graph(model, batch, batch.y)
        >>> per_point = rel["pos"].sum(-1) + rel["x"].sum(-1)
        >>> per_point.shape
        torch.Size([16])
    """
    attributor = Attributor(model, composite=composite, epsilon=epsilon, backend=backend, dtype=dtype)
    return attributor.attribute_graph(data, targets, keys=keys, forward_fn=forward_fn,
                                      check_finite=check_finite_values)

