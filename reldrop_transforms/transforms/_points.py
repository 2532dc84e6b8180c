"""The base of the point transforms: dense ``(B, N, C)`` batches and PyTorch Geometric ``Data``/``Batch``."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.data.data import BaseData
from torch_geometric.transforms import BaseTransform

from .._checks import (
    check_bool,
    check_finite_number,
    check_fits,
    check_homogeneous,
    check_keys,
)
from .._containers import rebuilt
from ..attribution import check_not_in_worker
from ..functional import (
    FILLS,
    fill_points,
    is_node_attribute,
    remove_points,
    sample_coins,
)
from ._common import RelevanceSettings
from ._labels import labels_key

__all__ = ["RelevancePointTransform"]


def _check_forward_fn(forward_fn: Any) -> Callable | None:
    if forward_fn is not None and not callable(forward_fn):
        raise TypeError(f"forward_fn should be callable, but got {type(forward_fn).__name__}.")
    return forward_fn


def _check_fill(fill: Any) -> str | float:
    if isinstance(fill, str) and fill in FILLS:
        return fill
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        return check_finite_number("fill", float(fill))
    raise ValueError(f"fill should be one of {FILLS} or a number, but got {fill!r} instead.")


class RelevancePointTransform(RelevanceSettings, BaseTransform):
    """Base of the point transforms: inputs, labels, masks (through :class:`RelevanceSettings`), fills; subclasses
    draw the random numbers of their masks (:meth:`draw`) and build the masks from the per-point relevance
    (:meth:`mask_rows`, a pure tensor function). See :class:`RelevanceDropout3d` for the arguments."""

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
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        self._set_up(model, p=p, composite=composite, epsilon=epsilon, backend=backend, labels_getter=labels_getter,
                     generator=generator, dtype=dtype, cuda_graphs=cuda_graphs)
        self.fill = _check_fill(fill)
        self.forward_fn = _check_forward_fn(forward_fn)
        self.channels_first = check_bool("channels_first", channels_first)
        self.keys = check_keys(keys)

    def check_settings(self) -> None:
        super().check_settings()
        self.channels_first = check_bool("channels_first", self.channels_first)  # ("False" would count as true)
        self.forward_fn = _check_forward_fn(self.forward_fn)  # (also where a dense batch reads neither)
        self.keys = check_keys(self.keys)

    def draw(self, num_clouds: int, pos: Tensor) -> tuple[Tensor, ...]:
        """The random tensors of the masks of ``num_clouds`` clouds: one row per cloud, or per point of ``pos``
        for per-point noise (dense ``(B, N, D)``, or PyG ``(N, D)``), from ``generator``."""
        raise NotImplementedError

    def mask_rows(self, relevance: Tensor, pos: Tensor, *draws: Tensor, batch: Tensor | None = None,
                  num_segments: int | None = None) -> Tensor:
        """The drop mask from the per-point relevance: dense ``(B, N)`` with ``pos`` ``(B, N, D)``, or flat
        ``(N,)`` with ``pos`` ``(N, D)``, the ``batch`` vector and ``num_segments`` clouds; a pure tensor function
        (captured in CUDA graphs). A cloud never loses all its points: its least relevant point is kept."""
        raise NotImplementedError

    def mask_key(self) -> tuple:
        """The settings :meth:`mask_rows` depends on (a captured graph is reused only for the same key)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings_repr()})"

    # -- dispatch --------------------------------------------------------------------------------------------
    def __call__(self, *inputs: Any) -> Any:
        check_not_in_worker(type(self).__name__)  # first: in a worker, a per-sample call is no batch either
        if not inputs:
            raise TypeError(f"{type(self).__name__} expects points (and labels), but got no input.")
        sample = inputs if len(inputs) > 1 else inputs[0]
        if isinstance(sample, (tuple, list)) and len(sample) > 1 and all(isinstance(d, BaseData) for d in sample[:2]):
            raise ValueError(
                f"{type(self).__name__} got a {type(sample).__name__} of {len(sample)} PyG "
                f"{type(sample[0]).__name__} objects (as PyG's DataListLoader yields for DataParallel), but masks one "
                "batch per call: batch the clouds into one Batch, Batch.from_data_list(clouds), or load them with "
                "torch_geometric.loader.DataLoader."
            )
        first = inputs[0] if len(inputs) > 1 else (sample[0] if isinstance(sample, (tuple, list)) else sample)
        if isinstance(first, Mapping):  # a dict sample, {"points": ..., "labels": ...}
            first = first[_points_key(type(self).__name__, first)]
        call = self.for_this_call()  # (the settings as they are when the call starts)
        call.check_settings()  # (as set now, also after construction: before any coin)
        fill = _check_fill(call.fill)
        if isinstance(first, BaseData):
            return call._call_pyg(sample, first, fill)
        if isinstance(first, Tensor):
            return call._call_dense(sample, first, fill)
        raise TypeError(
            f"{type(self).__name__} expects a dense batch (B, N, C) or a torch_geometric Data/Batch, "
            f"but got {type(first).__name__}."
        )

    def forward(self, data: Any) -> Any:  # BaseTransform API: a single Data/Batch
        return self(data)

    def _labels(self, sample: Any, default: Any = None) -> Tensor | None:
        """The labels: ``default`` (PyG ``data.y``) for the default getter on a lone Data/Batch, else the getter's."""
        if isinstance(self.labels_getter, str) and self.labels_getter == "default" and isinstance(sample, Mapping) \
                and default is not None and labels_key(sample) is None:
            return default  # (a dict holding a PyG batch and no labels: its y)
        if isinstance(self.labels_getter, str) and self.labels_getter == "default" \
                and not isinstance(sample, (tuple, list, Mapping)):
            if default is None:
                raise ValueError(
                    f"{type(self).__name__} could not find labels: pass t(points, labels), give the data a `y`, "
                    "pass a labels_getter callable, or labels_getter=None to attribute the predicted class."
                )
            return default
        return self._labels_from(sample)

    # -- dense -----------------------------------------------------------------------------------------------
    def _call_dense(self, sample: Any, points: Tensor, fill: str | float) -> Any:
        name = type(self).__name__
        if points.ndim != 3:
            layout = "(B, C, N)" if self.channels_first else "(B, N, C)"
            hint = (f" A single cloud ({layout[4:]} has no batch dimension (the attribution runs on batches): add "
                    "one with points[None], or batch the clouds with a DataLoader." if points.ndim == 2 else "")
            raise ValueError(
                f"{name} expects a batch of point clouds of shape {layout}, but got {tuple(points.shape)} instead."
                + hint
            )
        if fill == "remove":
            raise ValueError(f"{name}: fill='remove' needs PyG batches; dense batches keep N points per cloud.")
        if self.forward_fn is not None:
            raise ValueError(
                f"{name}: forward_fn adapts the call of PyG models, forward_fn(model, batch); a dense batch is fed to "
                "the model itself, model(points). Wrap the model in an nn.Module whose forward adapts the call (e.g. "
                "one that transposes (B, N, C) to (B, C, N), or pass channels_first=True with (B, C, N) batches), "
                "and leave forward_fn=None."
            )
        batch_size = points.shape[0]
        labels = self._labels(sample)
        num_points = points.shape[2 if self.channels_first else 1]
        if isinstance(labels, Tensor) and labels.shape == (batch_size, num_points) and labels.numel() \
                and not (labels.is_floating_point() or labels.is_complex()) \
                and not bool(((labels == 0) | (labels == 1)).all() and (labels.sum(1) == 1).all()):  # (not one-hot)
            raise ValueError(
                f"{name}: the labels have one class per point (shape {tuple(labels.shape)} for {batch_size} clouds of "
                f"{num_points} points), as for segmentation, but RelDrop attributes a classifier's logits: one "
                f"label per cloud ({batch_size},). Pass labels_getter=None to attribute the predicted class, or a "
                "labels_getter that returns one label per cloud."
            )
        labels = self._attributor.check_batch(points, labels, caller=name, what="clouds")
        if not isinstance(fill, str):
            check_fits(f"{name}: fill", fill, points.dtype)
        channels_last = points.transpose(1, 2) if self.channels_first else points
        if batch_size == 0:  # (clouds without points were refused by check_batch)
            return sample
        channel_dim = 1 if self.channels_first else 2
        positions = channels_last[..., :3]
        mask = self.masks(points, labels, lambda rel: rel.sum(channel_dim),
                          lambda b: self.draw(b, positions), self.mask_rows, extra=(positions,), key=self.mask_key())
        if mask is None:
            return sample
        out = fill_points(channels_last, mask, fill)
        out = out.transpose(1, 2) if self.channels_first else out  # (fill_points keeps the layout: the caller's)
        return _with_first(sample, out)

    # -- PyG -------------------------------------------------------------------------------------------------
    def _call_pyg(self, sample: Any, data: BaseData, fill: str | float) -> Any:
        name = type(self).__name__
        single = not isinstance(data, Batch)
        check_homogeneous(name, data)
        pos = getattr(data, "pos", None)
        if pos is None:
            raise ValueError(f"{name} expects point clouds with positions `pos`, but the {type(data).__name__} has none.")
        if pos.ndim != 2:  # (before the collation check: a DenseDataLoader's batch has no ptr either)
            raise ValueError(f"{name} expects `pos` of shape (N, D), but got {tuple(pos.shape)}. Dense clouds (B, N, D), "
                             "as PyG's DenseDataLoader batches them: pass the tensors themselves, t(batch.pos, "
                             "batch.y.view(-1)), or batch the clouds with a torch_geometric DataLoader.")
        _check_collated(name, data, single)
        if single:
            alone = data
            if "batch" in data:  # (all zeros, see _check_collated): batching makes its own
                alone = copy.copy(data)
                del alone.batch
            batch = Batch.from_data_list([alone])
        else:
            batch = data
        num_graphs = batch.num_graphs
        labels = self._labels(sample, default=getattr(batch, "y", None))
        if num_graphs == 0:
            return sample
        sizes = batch.ptr[1:] - batch.ptr[:-1]
        if bool((sizes == 0).any()):
            empty = (sizes == 0).nonzero().flatten()[:10].tolist()
            raise ValueError(f"{name}: cloud(s) {empty} have no points; remove empty clouds before RelDrop.")
        if isinstance(labels, Tensor) and labels.ndim and labels.shape[0] == batch.num_nodes != num_graphs:
            raise ValueError(
                f"{name}: the labels have one entry per point (shape {tuple(labels.shape)} for {batch.num_nodes} "
                f"points in {num_graphs} clouds), as for segmentation, but RelDrop attributes a classifier's "
                f"logits: one label per cloud ({num_graphs},). Pass labels_getter=None to attribute the predicted "
                "class, or a labels_getter that returns one label per cloud."
            )
        labels = self._attributor.check_graph(batch, labels, keys=self.keys, forward_fn=self.forward_fn,
                                              caller=name)[1]
        filled = self._filled_keys(batch, fill)  # (a fill that does not fit is refused before any draw)
        # the rule for p: coins first, then the draws of the whole batch
        with self._attributor.drawing():  # one batch's numbers in one piece, also when threads share the generator
            coins = sample_coins(num_graphs, self.p, device=batch.pos.device, generator=self.generator)
            draws = self.draw(num_graphs, batch.pos)
        if self.p < 1.0 and not self._attributor.graphs_apply(batch.pos):  # eagerly: the selected clouds alone
            mask = self._selected_mask(batch, labels, coins, draws, sizes, name)
        else:

            def post(rels: dict[str, Tensor], pos: Tensor, batch_vector: Tensor, *tensors: Tensor) -> tuple[Tensor]:
                return (self.mask_rows(_per_point(rels), pos, *tensors, batch=batch_vector, num_segments=num_graphs),)

            (mask,) = self._attributor.then_graph(batch, labels, post, (batch.pos, batch.batch, *draws),
                                                  key=(type(self), self.mask_key()), keys=self.keys,
                                                  forward_fn=self.forward_fn, caller=name, checked=True)
            if self.p < 1.0:  # (a CUDA graph attributes every cloud)
                mask = mask & coins[batch.batch]
        out = self._apply_pyg(batch, mask, fill, filled)
        out = _single_example(data, batch, out) if single else out
        return _with_first(sample, out)

    def _selected_mask(self, batch: Batch, labels: Tensor | None, coins: Tensor, draws: tuple[Tensor, ...],
                       sizes: Tensor, name: str) -> Tensor:
        """The mask of the nodes of ``batch`` where only the clouds whose coin came up are attributed (as a batch of
        their own: :meth:`Attributor.attribute_graph` with ``index``) and masked; ``draws`` are the whole batch's,
        per point or per cloud (:meth:`draw`)."""
        index = coins.nonzero().flatten()  # one synchronisation
        rels = self._attributor.attribute_graph(batch, labels, keys=self.keys, forward_fn=self.forward_fn,
                                                index=index, caller=name, checked=True)
        mask = torch.zeros(batch.num_nodes, dtype=torch.bool, device=batch.pos.device)
        if index.numel() == 0:
            return mask
        nodes = coins[batch.batch]
        counts = sizes.index_select(0, index)
        sub_vector = torch.repeat_interleave(torch.arange(index.numel(), device=index.device), counts)
        picked = tuple(d[nodes] if d.shape[0] == batch.num_nodes else d.index_select(0, index) for d in draws)
        mask[nodes] = self.mask_rows(_per_point(rels), batch.pos[nodes], *picked, batch=sub_vector,
                                     num_segments=index.numel())
        return mask

    def _filled_keys(self, batch: Batch, fill: str | float) -> list[str]:
        """The node attributes of ``batch`` that ``fill`` fills: every one for ``"first"``, the floating ones for
        ``"zero"`` and a number (which must fit their dtype); none for ``"remove"``, which drops the points."""
        if fill == "remove":
            return []
        keys = []
        for key in batch.keys():
            value = batch[key]
            if not is_node_attribute(batch, key, value) or value.shape[0] != batch.pos.shape[0] \
                    or (fill != "first" and not value.is_floating_point()):
                continue
            if not isinstance(fill, str):
                check_fits(f"{type(self).__name__}: fill (of `{key}`)", fill, value.dtype)
            keys.append(key)
        return keys

    def _apply_pyg(self, batch: Batch, mask: Tensor, fill: str | float, filled: Sequence[str]) -> Batch:
        if fill == "remove":
            return remove_points(batch, mask)
        out = copy.copy(batch)
        for name in ("_slice_dict", "_inc_dict"):  # bookkeeping of its own (a shallow copy shares these dicts: a
            if isinstance(getattr(batch, name, None), dict):  # later transform editing them would edit the input's)
                setattr(out, name, dict(getattr(batch, name)))
        for key in filled:
            out[key] = fill_points(batch[key], mask, fill, batch=batch.batch, num_segments=batch.num_graphs)
        return out


def _per_point(rels: dict[str, Tensor]) -> Tensor:
    """The relevance of each node: every attributed attribute's, its channels summed."""
    return sum(r.reshape(r.shape[0], -1).sum(1) for r in rels.values())


def _check_collated(name: str, data: BaseData, single: bool) -> None:
    """A ``Batch`` must come from collation (``ptr`` and the bookkeeping behind ``to_data_list``), and a single
    ``Data`` must hold one cloud: a ``batch`` vector naming several would be overwritten by batching it as one."""
    batch_vector = getattr(data, "batch", None)
    if single:
        if isinstance(batch_vector, Tensor) and batch_vector.numel() and bool((batch_vector != 0).any()):
            count = int(batch_vector.max()) + 1
            raise ValueError(f"{name} takes a Data as one cloud, but this {type(data).__name__} has a `batch` vector "
                             f"naming {count} clouds. Pass them as a Batch: Batch.from_data_list(clouds), or the "
                             "batches of a torch_geometric DataLoader.")
    elif not isinstance(getattr(data, "ptr", None), Tensor):
        raise ValueError(f"{name} expects a collated Batch (Batch.from_data_list(clouds), or the batches of a "
                         "torch_geometric DataLoader), but this Batch has no `ptr`: it was built by hand. Collate "
                         "the clouds with Batch.from_data_list instead.")


def _points_key(name: str, sample: Mapping) -> Any:
    """The key of the points in a dict sample: the first whose value is a tensor or a PyG ``Data``/``Batch``, other
    than the labels' (:func:`labels_key`)."""
    skip = labels_key(sample)
    for key, value in sample.items():
        if key != skip and isinstance(value, (Tensor, BaseData)):
            return key
    raise TypeError(f"{name} expects a dict sample to hold the points (a dense batch (B, N, C) or a torch_geometric "
                    f"Data/Batch) under a key other than the labels', but got keys {list(sample)}.")


def _with_first(sample: Any, out: Any) -> Any:
    """``sample`` with its points replaced by ``out``: its first entry (a tuple, list or namedtuple of its own type),
    a dict sample's points (:func:`_points_key`; a shallow copy of its own type), or ``out`` when the sample is the
    points themselves."""
    if isinstance(sample, Mapping):
        result = copy.copy(sample)
        result[_points_key("", sample)] = out
        return result
    if not isinstance(sample, (tuple, list)):
        return out
    if isinstance(sample[0], Mapping):
        return rebuilt(sample, [_with_first(sample[0], out), *sample[1:]])
    return rebuilt(sample, [out, *sample[1:]])


def _single_example(data: BaseData, batch: Batch, out: Batch) -> BaseData:
    """The single ``data`` after the transform: the attributes that changed in the one-cloud ``out`` batch taken
    from its example, all others (``y`` of shape (), ...) the input's own, so that shapes and dtypes match the
    input's (batching alone turns a 0-dim tensor into (1,))."""
    example = out.get_example(0)
    result = copy.copy(data)
    for key, value in data.items():
        if isinstance(value, Tensor) and key != "batch" and out[key] is not batch[key]:
            result[key] = example[key]
    if "num_nodes" in data:  # given explicitly: the survivors
        result.num_nodes = example.num_nodes
    if isinstance(data.get("batch"), Tensor):  # a one-cloud batch vector of its own: for the survivors
        result.batch = out.batch.to(data.batch.dtype)
    return result
