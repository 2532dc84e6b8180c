"""RelevanceDropout3d: the RelDrop point mask for dense point batches and PyTorch Geometric batches."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.data.data import BaseData
from torch_geometric.transforms import BaseTransform

from .._checks import check_unit_interval
from ..attribution import relevance_graph
from ..attribution._api import check_finite, check_inputs, check_not_in_worker
from ..attribution._state import unwrap_model
from ..functional import (
    FILLS,
    fill_points,
    keep_least_relevant,
    relevance_ball_mask,
    relevance_dropout_mask,
    remove_points,
    sample_coins,
)
from ..functional._erasing import _check_range
from ._common import attribute_selected, check_common, check_model, scatter_rows
from ._labels import parse_labels_getter

__all__ = ["RelevanceDropout3d", "RelevanceErasing3d"]


def _check_fill(fill: Any) -> str | float:
    if isinstance(fill, str) and fill in FILLS:
        return fill
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        return float(fill)
    raise ValueError(f"fill should be one of {FILLS} or a number, but got {fill!r} instead.")


class RelevancePointTransform(BaseTransform):
    """Base of the point transforms: inputs, labels, coins, attribution, fills; subclasses build the mask from
    the per-point relevance (:meth:`mask_from_relevance`). See :class:`RelevanceDropout3d` for the arguments."""

    def __init__(
        self,
        model: nn.Module,
        *,
        p: float,
        fill: str | float,
        composite,
        epsilon: float,
        backend: str,
        labels_getter: str | Callable[[Any], Any] | None,
        forward_fn: Callable[[nn.Module, Any], Tensor] | None,
        generator: torch.Generator | None,
        channels_first: bool,
        keys: tuple[str, ...],
    ) -> None:
        check_common(model, backend, generator, epsilon)
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"forward_fn should be callable, but got {type(forward_fn).__name__}.")
        self._model = (model,)
        self.p = check_unit_interval("p", p)
        self.fill = _check_fill(fill)
        self.composite = composite
        self.epsilon = float(epsilon)
        self.backend = backend
        self.labels_getter = labels_getter
        self._labels_getter = parse_labels_getter(labels_getter)
        self.forward_fn = forward_fn
        self.generator = generator
        self.channels_first = bool(channels_first)
        self.keys = tuple(keys)

    def mask_from_relevance(self, relevance: Tensor, pos: Tensor, batch: Tensor | None,
                            num_segments: int | None) -> Tensor:
        """The drop mask from the per-point relevance: dense ``(B, N)`` with ``pos`` ``(B, N, D)``, or flat
        ``(N,)`` with ``pos`` ``(N, D)``, the ``batch`` vector and ``num_segments`` clouds."""
        raise NotImplementedError


    @property
    def model(self) -> nn.Module:
        """The model whose relevance drives the mask (held by reference).

        A pickled or deep-copied transform holds a copy of the model: ``t.model = model`` rebinds it.
        """
        return self._model[0]

    @model.setter
    def model(self, model: nn.Module) -> None:
        check_model(model)
        self._model = (model,)

    def __repr__(self) -> str:
        options = {key: value for key, value in vars(self).items()
                   if not key.startswith("_") and isinstance(value, (bool, int, float, str, tuple))}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in options.items())})"

    # -- dispatch --------------------------------------------------------------------------------------------
    def __call__(self, *inputs: Any) -> Any:
        if not inputs:
            raise TypeError(f"{type(self).__name__} expects points (and labels), but got no input.")
        sample = inputs if len(inputs) > 1 else inputs[0]
        first = inputs[0] if len(inputs) > 1 else (sample[0] if isinstance(sample, (tuple, list)) else sample)
        check_not_in_worker(type(self).__name__)
        if isinstance(first, BaseData):
            return self._call_pyg(sample, first)
        if isinstance(first, Tensor):
            return self._call_dense(sample, first)
        raise TypeError(
            f"{type(self).__name__} expects a dense batch (B, N, C) or a torch_geometric Data/Batch, "
            f"but got {type(first).__name__}."
        )

    def forward(self, data: Any) -> Any:  # BaseTransform API: a single Data/Batch
        return self(data)

    def _labels(self, sample: Any, batch_size: int, default: Any = None) -> Tensor | None:
        if self._labels_getter is None:
            return None
        if self.labels_getter == "default" and not isinstance(sample, (tuple, list)):
            labels = default
            if labels is None:
                raise ValueError(
                    f"{type(self).__name__} could not find labels: pass t(points, labels), give the data a `y`, "
                    "pass a labels_getter callable, or labels_getter=None to attribute the predicted class."
                )
        else:
            labels = self._labels_getter(sample)
        if not isinstance(labels, Tensor):
            raise TypeError(f"the labels should be a torch.Tensor, but got {type(labels).__name__}.")
        if labels.ndim not in (1, 2) or labels.shape[0] != batch_size:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match a batch of {batch_size} clouds: expected "
                f"class indices ({batch_size},) or soft labels ({batch_size}, K)."
            )
        return labels

    # -- dense -----------------------------------------------------------------------------------------------
    def _call_dense(self, sample: Any, points: Tensor) -> Any:
        name = type(self).__name__
        if points.ndim != 3:
            layout = "(B, C, N)" if self.channels_first else "(B, N, C)"
            raise ValueError(
                f"{name} expects a batch of point clouds of shape {layout}, but got {tuple(points.shape)} instead."
            )
        if self.fill == "remove":
            raise ValueError(f"{name}: fill='remove' needs PyG batches; dense batches keep N points per cloud.")
        check_inputs(unwrap_model(self.model), points, caller=name)
        batch_size = points.shape[0]
        labels = self._labels(sample, batch_size)
        channels_last = points.transpose(1, 2) if self.channels_first else points
        if batch_size == 0 or channels_last.shape[1] == 0:
            return sample
        per_point, index = attribute_selected(self, points, labels, channel_dim=1 if self.channels_first else 2)
        if per_point is None:
            return sample
        positions = channels_last if index is None else channels_last.index_select(0, index)
        sub_mask = self.mask_from_relevance(per_point, positions[..., :3], None, None)
        mask = scatter_rows(keep_least_relevant(sub_mask, per_point), index, batch_size)
        out = fill_points(channels_last, mask, self.fill)
        out = out.transpose(1, 2) if self.channels_first else out
        if isinstance(sample, (tuple, list)):
            return type(sample)([out, *sample[1:]])
        return out

    # -- PyG -------------------------------------------------------------------------------------------------
    def _call_pyg(self, sample: Any, data: BaseData) -> Any:
        name = type(self).__name__
        single = not isinstance(data, Batch)
        batch = Batch.from_data_list([data]) if single else data
        if getattr(batch, "pos", None) is None:
            raise ValueError(f"{name} expects point clouds with positions `pos`, but the {type(data).__name__} has none.")
        if batch.pos.ndim != 2:
            raise ValueError(f"{name} expects `pos` of shape (N, D), but got {tuple(batch.pos.shape)}.")
        num_graphs = batch.num_graphs
        labels = self._labels(sample, num_graphs, default=getattr(batch, "y", None))
        if num_graphs == 0:
            return sample
        sizes = batch.ptr[1:] - batch.ptr[:-1]
        if bool((sizes == 0).any()):
            empty = (sizes == 0).nonzero().flatten()[:10].tolist()
            raise ValueError(f"{name}: cloud(s) {empty} have no points; remove empty clouds before RelDrop.")
        rels = relevance_graph(self.model, batch, labels, keys=self.keys, forward_fn=self.forward_fn,
                               composite=self.composite, epsilon=self.epsilon, backend=self.backend,
                               check_finite_values=False)
        per_point = sum(r.reshape(r.shape[0], -1).sum(1) for r in rels.values())
        check_finite(per_point.unsqueeze(1), name, batch.batch)
        mask = self.mask_from_relevance(per_point, batch.pos, batch.batch, num_graphs)
        if self.p < 1.0:
            coins = sample_coins(num_graphs, self.p, device=mask.device, generator=self.generator)
            mask = mask & coins[batch.batch]
        mask = keep_least_relevant(mask, per_point, batch=batch.batch, num_segments=num_graphs)
        out = self._apply_pyg(batch, mask)
        out = _single_example(data, batch, out) if single else out
        if isinstance(sample, (tuple, list)):
            return type(sample)([out, *sample[1:]])
        return out

    def _apply_pyg(self, batch: Batch, mask: Tensor) -> Batch:
        if self.fill == "remove":
            return remove_points(batch, mask)
        out = copy.copy(batch)
        for key in batch.keys():
            value = batch[key]
            if key in ("batch", "ptr") or not isinstance(value, Tensor) or not batch.is_node_attr(key):
                continue
            if value.shape[0] != mask.shape[0] or (self.fill != "first" and not value.is_floating_point()):
                continue
            out[key] = fill_points(value, mask, self.fill, batch=batch.batch, num_segments=batch.num_graphs)
        return out


def _single_example(data: BaseData, batch: Batch, out: Batch) -> BaseData:
    """The single ``data`` after the transform: the attributes that changed in the one-cloud ``out`` batch taken
    from its example, all others (``y`` of shape (), ...) the input's own, so that shapes and dtypes match the
    input's (batching alone turns a 0-dim tensor into (1,))."""
    example = out.get_example(0)
    result = copy.copy(data)
    for key, value in data.items():
        if isinstance(value, Tensor) and out[key] is not batch[key]:
            result[key] = example[key]
    if "num_nodes" in data:  # given explicitly: the survivors
        result.num_nodes = example.num_nodes
    return result


class RelevanceDropout3d(RelevancePointTransform):
    """Relevance-driven Input Dropout (RelDrop) for point clouds, dense or PyTorch Geometric.

    Per cloud: the LRP relevance of the *current* model (eval mode, training state untouched) is summed over
    each point's input channels (coordinates and features such as normals), min-max normalised to ``Rn`` per
    cloud, and the points where ``alpha * U + (1 - alpha) * Rn >= 1 - beta`` are dropped. A cloud never loses
    all its points: its least relevant point is kept.

    Dense batches ``(B, N, C)`` (or ``(B, C, N)`` with ``channels_first=True``) keep their size: dropped points
    are filled. PyG ``Batch`` objects are attributed with respect to ``pos`` and ``x`` (where present), all
    per-cloud statistics use the ``batch`` vector (no loop over clouds), and a new ``Batch`` is returned; with
    ``fill="remove"`` the dropped points are really removed and ``batch``, ``ptr`` and the ``get_example`` /
    ``to_data_list`` bookkeeping are rebuilt. A single ``Data`` is treated as a batch of one cloud, so the
    transform also sits in a PyG ``Compose`` (then only with ``num_workers=0``: attribution never runs in a
    DataLoader worker).

    Args:
        model: The model being trained (also when wrapped in DDP or ``torch.compile``); held by reference.
        alpha: Weight of the random term, in [0, 1] (paper: 0.5).
        beta: Drop threshold offset, in [0, 1] (paper: 0.5).
        p: Probability that a cloud is masked at all (per cloud). Dense batches attribute only the selected
            clouds; PyG batches attribute all clouds and apply the masks of the selected ones.
        fill: ``"zero"`` (all channels set to 0, the paper), ``"first"`` (copy the cloud's first kept point:
            PointNet++'s convention), a number, or ``"remove"`` (PyG batches only).
        composite: LRP rules, see :func:`reldrop_transforms.attribution.relevance`.
        epsilon: Stabiliser of the Epsilon rule.
        backend: ``"auto"``, ``"fast"`` or ``"zennit"``.
        labels_getter: ``"default"``: the second argument of ``t(points, labels)``, or ``data.y`` for PyG input;
            a callable ``labels_getter(inputs)``; or ``None`` for the predicted class.
        forward_fn: ``forward_fn(model, batch) -> logits`` for PyG models with other call signatures (default
            ``model(batch)``); it receives the unwrapped module.
        generator: Source of the coins and the mask noise.
        channels_first: Dense input is ``(B, C, N)`` instead of ``(B, N, C)``.
        keys: The PyG node attributes that are attributed (and whose relevance is summed per point).

    Shape:
        - dense points: (B, N, C) (or (B, C, N)), floating, on the model's device; output the same.
        - labels: (B,) integer or (B, K) floating.
        - PyG: ``Batch`` with ``pos`` (N, 3), optional ``x`` (N, F), ``batch`` (N,); ``y`` (num_graphs,).

    Example:
        >>> t = RelevanceDropout3d(model, fill="remove")
        >>> for batch in RelevanceLoader(torch_geometric.loader.DataLoader(dataset, batch_size=32), t):
        ...     loss = criterion(model(batch), batch.y)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float = 0.5,
        beta: float = 0.5,
        p: float = 1.0,
        fill: str | float = "zero",
        composite="epsilon_flat",
        epsilon: float = 1e-3,
        backend: str = "auto",
        labels_getter: str | Callable[[Any], Any] | None = "default",
        forward_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        generator: torch.Generator | None = None,
        channels_first: bool = False,
        keys: tuple[str, ...] = ("pos", "x"),
    ) -> None:
        super().__init__(model, p=p, fill=fill, composite=composite, epsilon=epsilon, backend=backend,
                         labels_getter=labels_getter, forward_fn=forward_fn, generator=generator,
                         channels_first=channels_first, keys=keys)
        self.alpha = check_unit_interval("alpha", alpha)
        self.beta = check_unit_interval("beta", beta)

    def mask_from_relevance(self, relevance: Tensor, pos: Tensor, batch: Tensor | None,
                            num_segments: int | None) -> Tensor:
        return relevance_dropout_mask(relevance, self.alpha, self.beta, generator=self.generator, batch=batch,
                                      num_segments=num_segments)


class RelevanceErasing3d(RelevancePointTransform):
    """Relevance-guided erasing for point clouds: drop every point within a ball around one of the cloud's
    ``top_k`` most relevant points (the point-cloud counterpart of :class:`RelevanceErasing2d`).

    The ball's radius is ``U(radius)`` times the cloud's bounding-box diagonal; positions are ``pos`` for PyG
    batches and the first three channels of dense points. A cloud with flat relevance gets a random centre, and a
    cloud never loses all its points (its least relevant point is kept). Dense or PyG input, with the fills,
    loaders and guarantees of :class:`RelevanceDropout3d`.

    Args:
        radius: Range of the ball's radius as a fraction of the bounding-box diagonal.
        top_k: The centre is drawn uniformly from this many most relevant points.
        Other arguments: as :class:`RelevanceDropout3d`.

    Example:
        >>> t = RelevanceErasing3d(model, radius=(0.1, 0.3), top_k=1, fill="remove")
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        p: float = 1.0,
        radius: tuple[float, float] = (0.1, 0.3),
        top_k: int = 1,
        fill: str | float = "zero",
        composite="epsilon_flat",
        epsilon: float = 1e-3,
        backend: str = "auto",
        labels_getter: str | Callable[[Any], Any] | None = "default",
        forward_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        generator: torch.Generator | None = None,
        channels_first: bool = False,
        keys: tuple[str, ...] = ("pos", "x"),
    ) -> None:
        super().__init__(model, p=p, fill=fill, composite=composite, epsilon=epsilon, backend=backend,
                         labels_getter=labels_getter, forward_fn=forward_fn, generator=generator,
                         channels_first=channels_first, keys=keys)
        self.radius = _check_range("radius", radius, 0.0)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k should be an integer >= 1, but got {top_k!r} instead.")
        self.top_k = top_k

    def mask_from_relevance(self, relevance: Tensor, pos: Tensor, batch: Tensor | None,
                            num_segments: int | None) -> Tensor:
        return relevance_ball_mask(relevance, pos, radius=self.radius, top_k=self.top_k, generator=self.generator,
                                   batch=batch, num_segments=num_segments)
