"""Point-cloud kernels: keeping a point per cloud, fills, and removing points from a PyG batch. No model."""

from __future__ import annotations

import copy
import numbers

import torch
from torch import Tensor

from .._checks import check_bool_mask, check_finite_number, check_segments, check_tensor
from ._mask import fill_dropped

__all__ = ["keep_least_relevant", "fill_points", "FILLS", "remove_points", "is_node_attribute"]

FILLS = ("zero", "first", "remove")


def _segments(mask: Tensor, batch: Tensor | None) -> tuple[Tensor, Tensor, int]:
    """Flat (N,) views and the segment of each element: dense (B, N) rows, or PyG ``batch``."""
    if batch is None:
        num, size = mask.shape
        return mask.reshape(-1), torch.arange(num, device=mask.device).repeat_interleave(size), num
    return mask, batch, -1


def keep_least_relevant(
    mask: Tensor, relevance: Tensor, *, batch: Tensor | None = None, num_segments: int | None = None
) -> Tensor:
    """Un-drop the least relevant point of every cloud whose points would all be dropped.

    RelDrop never passes on an empty cloud: where the mask covers a whole cloud, its least relevant point (the
    first one on ties) is kept. Vectorised over clouds, no synchronisation.

    Shape:
        - mask, relevance: (B, N) dense, or (N,) with ``batch`` (N,) and ``num_segments`` clouds.
        - output: like ``mask``, bool.
    """
    check_bool_mask("mask", mask)
    check_tensor("relevance", relevance, "like mask")
    if relevance.shape != mask.shape:
        raise ValueError(f"relevance should have the mask's shape {tuple(mask.shape)}, but got "
                         f"{tuple(relevance.shape)}.")
    if batch is None:  # dense (B, N): row-wise
        if mask.ndim != 2:
            raise ValueError(f"without batch, mask should have shape (B, N) (dense clouds), but got "
                             f"{tuple(mask.shape)}: give batch and num_segments for PyG-style (N,) clouds.")
        if mask.shape[1] == 0:  # clouds without points: nothing to keep
            return mask.clone()
        rescue = torch.zeros_like(mask).scatter_(1, relevance.argmin(1, keepdim=True), True)  # first minimum
        return mask & ~(rescue & mask.all(1, keepdim=True))
    batch, count = check_segments(batch, num_segments)
    flat_mask, segment, _ = _segments(mask, batch)
    flat_rel = relevance.reshape(-1) if relevance.is_floating_point() else relevance.reshape(-1).float()
    n = flat_mask.shape[0]
    kept = torch.zeros(count, dtype=torch.long, device=mask.device).scatter_add_(0, segment, (~flat_mask).long())
    all_dropped = kept == 0
    lowest = flat_rel.new_full((count,), float("inf")).scatter_reduce(0, segment, flat_rel, "amin")
    positions = torch.arange(n, device=mask.device)
    at_lowest = lowest[segment]  # (a NaN relevance makes its cloud's minimum NaN: its first NaN point is kept, as
    minimal = (flat_rel == at_lowest) | (flat_rel.isnan() & at_lowest.isnan())  # argmin does in the dense form)
    candidate = torch.where(minimal, positions, torch.full_like(positions, n))
    first = torch.full((count,), n, dtype=torch.long, device=mask.device).scatter_reduce(0, segment, candidate, "amin")
    rescue = torch.zeros(n + 1, dtype=torch.bool, device=mask.device)
    rescue[torch.where(all_dropped, first, torch.full_like(first, n))] = True
    return (flat_mask & ~rescue[:n]).reshape(mask.shape)


def _first_kept_index(mask: Tensor, segment: Tensor, count: int) -> Tensor:
    n = mask.shape[0]
    positions = torch.arange(n, device=mask.device)
    candidate = torch.where(mask, torch.full_like(positions, n), positions)
    # n for a segment without a kept element: the zero row that _with_zero_row appends
    return torch.full((count,), n, dtype=torch.long, device=mask.device).scatter_reduce(0, segment, candidate, "amin")


def _with_zero_row(points: Tensor) -> Tensor:
    return torch.cat([points, points.new_zeros((1, *points.shape[1:]))])


def fill_points(
    points: Tensor,
    mask: Tensor,
    fill: str | float = "zero",
    *,
    batch: Tensor | None = None,
    num_segments: int | None = None,
) -> Tensor:
    """Return a copy of ``points`` with the dropped points filled; ``points`` is not modified.

    Args:
        points: Point features, channels last.
        mask: ``True`` where a point is dropped.
        fill: ``"zero"`` (all channels 0, the paper), ``"first"`` (copy the cloud's first kept point: PointNet++'s
            convention for its random dropout; zeros in a cloud without a kept point) or a number.
        batch: PyG ``batch`` vector for flat (N, C) points.
        num_segments: Number of clouds with ``batch``.

    Shape:
        - points: (B, N, C) dense, or (N, *) with ``batch`` ((N,), (N, C), a per-point (N, a, b), ...).
        - mask: (B, N) dense, or (N,) with ``batch``; bool.
        - output: same as ``points``.
    """
    check_tensor("points", points, "(B, N, C) (or (N, *) with batch)")
    check_bool_mask("mask", mask)
    if points.shape[:mask.ndim] != mask.shape:
        raise ValueError(f"mask should have the shape of the points without their channels, (B, N) for (B, N, C) "
                         f"(or (N,) for (N, *) with batch), but got a mask of shape {tuple(mask.shape)} for points of "
                         f"shape {tuple(points.shape)}.")
    if fill == "zero":
        fill = 0.0
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        check_finite_number("fill", float(fill))
        if points.ndim != mask.ndim + 1:  # (N,) without channels, or (N, *) with several (per-point frames)
            return torch.where(_expand(mask, points), torch.as_tensor(fill, dtype=points.dtype, device=points.device),
                               points)
        return fill_dropped(points, mask, float(fill), channel_dim=-1)
    if fill != "first":
        raise ValueError(f"fill should be 'zero', 'first' or a number, but got {fill!r} instead.")
    if batch is None:
        if mask.ndim != 2:
            raise ValueError(f"fill='first' without batch takes dense clouds, a (B, N) mask for (B, N, C) points, but "
                             f"got a mask of shape {tuple(mask.shape)}: give batch and num_segments for PyG-style "
                             "(N, C) points.")
        # each cloud's first kept point (argmax: the first of the maxima), zeros where none is kept;
        kept = ~mask  # in the layout of `points` (a transposed view comes back transposed, as with the other fills)
        clouds = torch.arange(mask.shape[0], device=mask.device)
        first = points[clouds, kept.to(torch.uint8).argmax(1)]
        first = torch.where(_expand(kept.any(1), first), first, torch.zeros((), dtype=points.dtype,
                                                                             device=points.device))
        return torch.where(_expand(mask, points), first[:, None], points)
    batch, num_segments = check_segments(batch, num_segments)
    first = _first_kept_index(mask, batch, num_segments)
    return torch.where(_expand(mask, points), _with_zero_row(points)[first[batch]], points)


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def _counts_nodes(batch, key: str, value: Tensor, inc) -> bool:
    """Whether ``key`` holds node indices: PyG increments it by the node count when batching, so its stored
    increments are the clouds' node offsets (``ptr[:-1]``). Where those are all zero (a single graph) the data
    class's own ``__inc__`` is asked whether it is the node count."""
    offsets = batch.ptr[:-1]
    if torch.is_tensor(inc) and inc.shape == offsets.shape and bool((inc != 0).any()):
        return torch.equal(inc.to(offsets.device), offsets)
    num_nodes = batch.num_nodes
    return bool(num_nodes) and bool(torch.as_tensor(batch.__inc__(key, value)).eq(num_nodes).all())


def _followed_key(name: str, slices: dict) -> str | None:
    """The ``key`` whose ``follow_batch`` attribute ``name`` is (``<key>_batch`` / ``<key>_ptr``: they have no slices
    of their own, ``get_example`` does not know them), or ``None``."""
    if name in slices:
        return None
    for suffix in ("_batch", "_ptr"):
        if name.endswith(suffix) and name[:-len(suffix)] in slices:
            return name[:-len(suffix)]
    return None


def followed_keys(batch) -> dict[str, str]:
    """The ``<key>_batch`` / ``<key>_ptr`` attributes that ``follow_batch`` added to a PyG ``Batch`` -> their
    ``key``."""
    slices = getattr(batch, "_slice_dict", None) or {}
    names = batch.keys()  # (iterating a Batch gives its items)
    return {name: key for name in names if (key := _followed_key(name, slices)) is not None}


def is_node_attribute(batch, key: str, value) -> bool:
    """Whether ``value`` (``batch[key]``) holds one row per node of a PyG ``Batch``: PyG's own size rule
    (``is_node_attr``), and, where the batch has them, per-cloud slices equal to those of ``pos`` (a graph-level
    attribute whose rows happen to add up to the node count is not one). ``batch``, ``ptr`` and the
    ``follow_batch`` attributes are bookkeeping, not node attributes."""
    if key in ("batch", "ptr") or not isinstance(value, Tensor) or not batch.is_node_attr(key):
        return False
    slices = getattr(batch, "_slice_dict", None) or {}
    if key not in slices:
        return _followed_key(key, slices) is None
    reference = slices.get("pos")
    return reference is None or torch.equal(slices[key], reference)


def remove_points(batch, drop: Tensor):
    """A new PyG ``Batch`` without the dropped points; the input is not modified.

    Every node-level attribute is filtered; index attributes that count nodes (``edge_index``, ``face``, ...) keep
    only the entries whose nodes all survive and are renumbered, and their edge-level companions follow; ``batch``,
    ``ptr`` and the bookkeeping behind ``get_example``/``to_data_list`` are rebuilt. Vectorised over clouds.

    Shape:
        - drop: (N,) bool over the batch's nodes.
    """
    keep = ~drop
    num_graphs = batch.num_graphs
    counts = torch.zeros(num_graphs, dtype=torch.long, device=keep.device).scatter_add_(0, batch.batch, keep.long())
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    new_index = keep.long().cumsum(0) - 1  # old node -> new node (valid where kept)
    kept_nodes = keep.nonzero().flatten()
    out = copy.copy(batch)
    slices = dict(getattr(batch, "_slice_dict", None) or {})  # (a Batch built by hand with `ptr` has none)
    incs = dict(getattr(batch, "_inc_dict", None) or {})
    edge_keeps: dict[int, tuple[Tensor, Tensor]] = {}
    followed = followed_keys(batch)
    done = {"batch", "ptr", *followed}
    taken: dict[str, Tensor] = {}  # key -> the rows kept (along its concatenation dimension)
    for key in list(batch.keys()):
        value = batch[key]
        if key in done or not isinstance(value, Tensor):
            continue
        dim = batch.__cat_dim__(key, value)
        inc = incs.get(key)
        # index attributes first: PyG's is_node_attr guesses from the size, and a (3, F) face with F == N fits.
        # A key set on the batch after collation (batch.edge_index = knn_graph(batch.pos, k, batch.batch)) has no
        # increments: PyG's convention (its __inc__: the node count for "index" keys and face) decides
        if not value.is_floating_point() and (inc is not None or key not in slices) \
                and _counts_nodes(batch, key, value, inc):
            # one entry per index along the concatenation dimension (an edge's two nodes, a face's three, one
            # node of a 1-D index such as a keypoint list): it survives when all its nodes do
            if value.numel():
                entries = value.movedim(dim, 0).reshape(value.shape[dim], -1)
                survive, owner = keep[entries].all(1), batch.batch[entries[:, 0]]
            else:  # no entries at all (a cloud without edges), or entries of no nodes
                survive = torch.ones(value.shape[dim], dtype=torch.bool, device=value.device)
                owner = batch.batch.new_zeros(value.shape[dim])
            idx = survive.nonzero().flatten()
            out[key] = new_index[value].index_select(dim, idx)
            per_graph = torch.zeros(num_graphs, dtype=torch.long, device=value.device).scatter_add_(
                0, owner, survive.long())
            kept_slices = torch.cat([per_graph.new_zeros(1), per_graph.cumsum(0)])
            if inc is not None:  # (a key set after collation stays without them, as PyG's separate skips it)
                slices[key] = kept_slices
                incs[key] = ptr[:-1].clone()
            if key == "edge_index" or value.shape[dim] not in edge_keeps:  # edge attributes follow edge_index,
                edge_keeps[value.shape[dim]] = (idx, kept_slices)  # not a face tensor of the same length
            done.add(key)
            taken[key] = idx
        elif is_node_attribute(batch, key, value) and value.shape[dim] == keep.shape[0]:
            out[key] = value.index_select(dim, kept_nodes)
            if key in slices:  # (a key set after collation stays without them, as PyG's separate skips it)
                slices[key] = ptr
            done.add(key)
            taken[key] = kept_nodes
    for key in list(batch.keys()):  # edge-level companions (edge_attr, ...) follow their index
        value = batch[key]
        if key in done or not isinstance(value, Tensor):
            continue
        if batch.is_edge_attr(key):
            dim = batch.__cat_dim__(key, value)
            if value.shape[dim] in edge_keeps:
                idx, edge_slices = edge_keeps[value.shape[dim]]
                out[key] = value.index_select(dim, idx)
                if key in slices:
                    slices[key] = edge_slices
                taken[key] = idx
    for name, key in followed.items():  # follow_batch's <key>_batch / <key>_ptr, for the rows of key kept
        if key in taken:
            value = batch[name]
            out[name] = value.index_select(0, taken[key].to(value.device)) if name.endswith("_batch") else \
                slices[key].to(device=value.device, dtype=value.dtype)
    out.batch = batch.batch[keep]
    out.ptr = ptr
    out._slice_dict = slices
    out._inc_dict = incs
    if "num_nodes" in batch:  # counts given explicitly (Data(num_nodes=...)) follow the survivors
        if hasattr(batch._store, "_num_nodes"):  # per cloud, for get_example/to_data_list
            out._store._num_nodes = counts.tolist()
        out.num_nodes = int(ptr[-1])
    return out
