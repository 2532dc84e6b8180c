"""Neighbourhood operations on point clouds in plain PyTorch: farthest point sampling, k-nearest neighbours and
ball query.

PyG >= 2.8 computes ``fps``, ``knn`` and ``radius`` with pyg-lib (or torch-cluster), which have no wheels where this
project runs. These kernels need neither. Each takes either

- a **dense** batch: ``(B, N, D)`` tensors, all clouds of the same size, and returns dense indices into ``N``; or
- a **PyG-style** batch: ``(N_total, D)`` tensors with a sorted ``batch`` vector (``None`` means one cloud), and
  returns flat indices into ``N_total`` (``(row, col)`` pairs for the neighbourhood queries, as torch-cluster).

Clouds of different sizes are padded to the largest one internally, so the work is vectorised over clouds
(memory ``B * M_max * N_max`` for the neighbourhood queries). The indices are computed without autograd; gather the
features with them to keep the gradient.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Generator, Tensor
from torch.overrides import handle_torch_function, has_torch_function

__all__ = ["farthest_point_sampling", "knn", "ball_query"]


# -- helpers -----------------------------------------------------------------------------------------------------------
def _one_operation(function: Callable) -> Callable:
    """``function`` (an index computation: nothing in it has a gradient) run under ``torch.no_grad()`` (its body
    needs none of its own) and dispatched as one operation to a ``TorchFunctionMode`` (``handle_torch_function``,
    the protocol for functions outside torch): a mode watching every operation of a forward (the fast LRP engine's;
    a profiler) sees one instead of the hundreds inside (their dispatch to a mode in Python is the cost). Tensor
    subclasses among the arguments are taken as plain tensors (the indices are plain). Every tensor made inside gets
    its device explicitly (a mode such as ``torch.device``'s does not see them)."""

    @functools.wraps(function)
    def dispatched(*args, **kwargs):
        tensors = tuple(arg for arg in (*args, *kwargs.values()) if isinstance(arg, Tensor))
        if has_torch_function(tensors):
            if any(type(tensor) is not Tensor for tensor in tensors):
                args = tuple(_plain(arg) for arg in args)
                kwargs = {key: _plain(arg) for key, arg in kwargs.items()}
                tensors = tuple(arg for arg in (*args, *kwargs.values()) if isinstance(arg, Tensor))
            if has_torch_function(tensors):  # a mode (no subclass is left)
                return handle_torch_function(dispatched, tensors, *args, **kwargs)
        return function(*args, **kwargs)

    @functools.wraps(function)
    def one_operation(*args, **kwargs):
        with torch.no_grad():  # (first: a mode sees the operation without gradients, as everything inside)
            return dispatched(*args, **kwargs)

    return one_operation


def _plain(value):
    return value.as_subclass(Tensor) if isinstance(value, Tensor) and type(value) is not Tensor else value


def _check_points(name: str, points: Tensor, caller: str, dims: int | None = None) -> None:
    if not isinstance(points, Tensor):
        raise TypeError(f"{caller} expects {name} as a torch.Tensor, but got {type(points).__name__}.")
    if not points.is_floating_point():
        raise TypeError(f"{caller} expects floating-point {name}, but got dtype {points.dtype}.")
    if points.ndim not in (2, 3):
        raise ValueError(
            f"{caller} expects {name} of shape (N, D) with a batch vector or (B, N, D), "
            f"but got {tuple(points.shape)} instead."
        )
    if dims is not None and points.shape[-1] != dims:
        raise ValueError(f"{caller} expects {name} with {dims} coordinates in the last dimension, "
                         f"but got {tuple(points.shape)} instead.")


def _check_batch(name: str, batch: Tensor | None, num_points: int, caller: str) -> None:
    if batch is None:
        return
    if not isinstance(batch, Tensor):
        raise TypeError(f"{caller} expects {name} as a torch.Tensor or None, but got {type(batch).__name__}.")
    if batch.dtype not in (torch.int64, torch.int32) or batch.shape != (num_points,):
        raise ValueError(
            f"{caller} expects {name} as an integer tensor of shape ({num_points},), "
            f"but got {tuple(batch.shape)} of dtype {batch.dtype} instead."
        )
    if num_points and (bool((batch[1:] < batch[:-1]).any()) or int(batch[0]) < 0):
        raise ValueError(f"{caller} expects {name} sorted in ascending order with non-negative cloud indices "
                         "(as PyG's Batch), but it is not.")


def _counts(batch: Tensor | None, num_points: int, num_clouds: int, device: torch.device) -> Tensor:
    if batch is None:
        return torch.full((num_clouds,), num_points, dtype=torch.long, device=device)
    return torch.bincount(batch.long(), minlength=num_clouds)


def _num_clouds(*batches: Tensor | None) -> int:
    sizes = [int(b.max()) + 1 for b in batches if b is not None and b.numel()]
    return max(sizes, default=1)


def _pad(points: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(N_total, D)`` split by ``counts`` into ``(B, N_max, D)`` (zero padded), the valid mask and the offsets."""
    num_clouds = counts.numel()
    ptr = torch.zeros(num_clouds + 1, dtype=torch.long, device=points.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    n_max = int(counts.max()) if num_clouds else 0
    slot = torch.arange(n_max, device=points.device)
    mask = slot < counts[:, None]
    dense = points.new_zeros(num_clouds, n_max, points.shape[-1])
    dense[mask] = points
    return dense, mask, ptr[:-1]


def _squared_distances(a: Tensor, b: Tensor, exact: bool) -> Tensor:
    """``(B, M, D)``, ``(B, N, D)`` -> ``(B, M, N)`` squared Euclidean distances."""
    if exact:  # exact pairwise differences: for coordinates (D = 3), where radii are compared
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square()
    return torch.cdist(a, b).square()  # matmul form for large D (feature-space kNN)


# -- farthest point sampling -------------------------------------------------------------------------------------------
@_one_operation
def farthest_point_sampling(
    pos: Tensor,
    batch: Tensor | None = None,
    ratio: float | None = None,
    num_samples: int | None = None,
    *,
    random_start: bool = False,
    generator: Generator | None = None,
) -> Tensor:
    """Farthest point sampling per cloud: each new point is the one farthest from those already chosen.

    The first point of each cloud is its first point, or a uniformly drawn one with ``random_start=True``. Ties
    go to the lowest index. Give either ``ratio`` (``ceil(ratio * n)`` points from a cloud of ``n``, as
    torch-cluster's ``fps``) or ``num_samples`` (per cloud; a PyG-style cloud with fewer points gives all of them,
    each once; a dense batch needs ``num_samples <= N``). Neither: ``ratio = 0.5``.

    Args:
        pos: Point coordinates (any number of dimensions ``D``, usually 3).
        batch: Cloud index of each point, sorted (PyG's ``Batch.batch``); only with ``pos`` of shape ``(N, D)``;
            ``None`` means one cloud.
        ratio: Fraction of each cloud to keep, in (0, 1].
        num_samples: Number of points to keep per cloud, >= 1.
        random_start: Draw the first point of each cloud uniformly instead of taking its first point.
        generator: Random generator for ``random_start`` (on the device of ``pos``).

    Shape:
        - pos: (N, D) with batch (N,), or (B, N, D).
        - output: (S_total,) int64 indices into N, cloud by cloud in sampling order; or (B, S) indices into each
          cloud's N for dense input.

    Example:
        >>> pos = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0.1, 0, 0], [5, 0, 0]])
        >>> farthest_point_sampling(pos, num_samples=2)
        tensor([0, 3])
    """
    caller = "farthest_point_sampling"
    _check_points("pos", pos, caller)
    if ratio is not None and num_samples is not None:
        raise ValueError(f"{caller} takes either ratio or num_samples, but got both.")
    if ratio is None and num_samples is None:
        ratio = 0.5
    if ratio is not None and not 0.0 < ratio <= 1.0:
        raise ValueError(f"`ratio` should be in the interval (0.0, 1.0], but got {ratio} instead.")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise ValueError(f"`num_samples` should be a positive int, but got {num_samples!r} instead.")
    dense_input = pos.ndim == 3
    if dense_input and batch is not None:
        raise ValueError(f"{caller}: batch is only for pos of shape (N, D), but got pos {tuple(pos.shape)}.")
    if dense_input:
        num_clouds, n = pos.shape[:2]
        if num_samples is not None and num_samples > n:
            raise ValueError(f"{caller}: num_samples={num_samples} is more than the {n} points of each cloud.")
        dense, mask = pos, None
        counts = torch.full((num_clouds,), n, dtype=torch.long, device=pos.device)
        offsets = None
    else:
        _check_batch("batch", batch, pos.shape[0], caller)
        num_clouds = _num_clouds(batch)
        counts = _counts(batch, pos.shape[0], num_clouds, pos.device)
        dense, mask, offsets = _pad(pos.detach(), counts)
    if ratio is not None:
        samples = torch.ceil(counts.to(torch.float64) * ratio).long()
    else:
        samples = counts.clamp(max=num_samples)
    samples = torch.minimum(samples, counts)

    dense = dense.detach()
    b, n_max = dense.shape[:2]
    s_max = int(samples.max()) if b else 0
    if s_max == 0:
        index = torch.zeros(b, 0, dtype=torch.long, device=pos.device)
        return index if dense_input else index.view(-1)
    if random_start:
        draw = torch.rand(b, generator=generator, device=pos.device, dtype=torch.float64)
        current = (draw * counts).long().clamp(max=n_max - 1)[:, None]
    else:
        current = torch.zeros(b, 1, dtype=torch.long, device=pos.device)
    distance = torch.full((b, n_max), math.inf, dtype=dense.dtype, device=pos.device)
    if mask is not None:
        distance[~mask] = -1.0  # padding is never farther than a real point
    rows = torch.arange(b, device=pos.device)[:, None]
    index = _farthest_points(dense, current, distance, rows, s_max)
    if dense_input:
        return index
    keep = torch.arange(s_max, device=pos.device) < samples[:, None]
    return (index + offsets[:, None])[keep]


def _farthest_points(dense: Tensor, current: Tensor, distance: Tensor, rows: Tensor, steps: int) -> Tensor:
    """The sampling loop of :func:`farthest_point_sampling`: ``(b, steps)`` picks from the first ones ``current``
    ``(b, 1)``, ``distance`` ``(b, n)`` updated in place.

    Six tensor operations per step, whose dispatch is the loop's cost (a ``TorchFunctionMode`` sees the whole of
    :func:`farthest_point_sampling` as one operation: see :func:`_one_operation`).
    """
    picks = [current]
    for _ in range(steps - 1):
        chosen = dense[rows, current]  # (b, 1, D)
        torch.minimum(distance, (dense - chosen).square().sum(-1), out=distance)
        current = distance.argmax(-1, keepdim=True)  # first maximum on ties
        picks.append(current)
    return torch.cat(picks, 1)


# -- k nearest neighbours ----------------------------------------------------------------------------------------------
@_one_operation
def knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor | None = None,
    batch_y: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The ``k`` nearest points of ``x`` to each point of ``y``, within the same cloud (Euclidean distance).

    Neighbours come nearest first (equally distant ones by index; which of several points tied at the ``k``-th
    distance is kept is unspecified); when ``x`` and ``y`` are the same points, each point is
    its own first neighbour. A PyG-style cloud of ``x`` with fewer than ``k`` points gives all its points (so
    ``row`` may hold fewer than ``k`` pairs per query); a dense batch needs ``k <= N``.

    Args:
        x: Points searched (coordinates or features of any dimension ``D``).
        y: Query points, same ``D``.
        k: Number of neighbours, >= 1.
        batch_x: Cloud index of each point of ``x``, sorted; only for ``(N, D)`` input; ``None`` means one cloud.
        batch_y: Cloud index of each point of ``y``, sorted; only for ``(M, D)`` input; ``None`` means one cloud.

    Shape:
        - x: (N, D) and y: (M, D) with batch_x (N,), batch_y (M,); or x: (B, N, D) and y: (B, M, D).
        - output: ``(row, col)``, each (E,) int64: ``y[row[e]]`` has neighbour ``x[col[e]]``, sorted by ``row``
          then distance; or for dense input one (B, M, k) int64 tensor of indices into each cloud's N.

    Example:
        >>> x = torch.tensor([[0.0, 0], [1, 0], [3, 0]])
        >>> knn(x, x[:1], 2)
        (tensor([0, 0]), tensor([0, 1]))
    """
    caller = "knn"
    _check_points("x", x, caller)
    _check_points("y", y, caller)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` should be a positive int, but got {k!r} instead.")
    if x.ndim != y.ndim or x.shape[-1] != y.shape[-1] or (x.ndim == 3 and x.shape[0] != y.shape[0]):
        raise ValueError(f"{caller} expects x and y of shapes (N, D), (M, D) or (B, N, D), (B, M, D), "
                         f"but got {tuple(x.shape)} and {tuple(y.shape)} instead.")
    if x.ndim == 3:
        if batch_x is not None or batch_y is not None:
            raise ValueError(f"{caller}: batch vectors are only for (N, D) input, but got x {tuple(x.shape)}.")
        if k > x.shape[1]:
            raise ValueError(f"{caller}: k={k} is more than the {x.shape[1]} points of each cloud.")
        distance = _squared_distances(y.detach(), x.detach(), exact=x.shape[-1] <= 3)
        return _smallest(distance, k)
    _check_batch("batch_x", batch_x, x.shape[0], caller)
    _check_batch("batch_y", batch_y, y.shape[0], caller)
    num_clouds = _num_clouds(batch_x, batch_y)
    x_dense, x_mask, x_offsets = _pad(x.detach(), _counts(batch_x, x.shape[0], num_clouds, x.device))
    y_dense, y_mask, y_offsets = _pad(y.detach(), _counts(batch_y, y.shape[0], num_clouds, y.device))
    distance = _squared_distances(y_dense, x_dense, exact=x.shape[-1] <= 3)
    distance.masked_fill_(~x_mask[:, None, :], math.inf)
    k_eff = min(k, x_dense.shape[1])
    nearest = _smallest(distance, k_eff)  # (B, M_max, k_eff)
    valid = y_mask[:, :, None] & (distance.gather(2, nearest) < math.inf)
    row = (torch.arange(y_dense.shape[1], device=y.device) + y_offsets[:, None])[:, :, None].expand_as(nearest)
    col = nearest + x_offsets[:, None, None]
    return row[valid], col[valid]


def _smallest(distance: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` smallest entries of the last dimension, ascending; equal ones by index."""
    if k == 0:
        return distance.new_zeros(*distance.shape[:-1], 0, dtype=torch.long)
    index = torch.topk(distance, k, dim=-1, largest=False, sorted=False).indices  # much cheaper than a full sort
    index = index.sort(dim=-1).values  # topk promises no order among equal values: by index, then
    order = torch.sort(distance.gather(-1, index), dim=-1, stable=True).indices  # by distance, stably
    return index.gather(-1, order)


# -- ball query --------------------------------------------------------------------------------------------------------
@_one_operation
def ball_query(
    pos: Tensor,
    centers: Tensor,
    radius: float,
    max_neighbors: int,
    batch: Tensor | None = None,
    batch_centers: Tensor | None = None,
    *,
    return_mask: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Points of ``pos`` within ``radius`` of each centre (same cloud), at most ``max_neighbors``, lowest index first.

    As PointNet++'s grouping, the neighbours are the first ``max_neighbors`` points in index order with distance
    ``<= radius`` (not the nearest ones). A centre with **no** point within ``radius`` gets its nearest point of the
    same cloud as its only neighbour, so that every centre has a group to pool over (when centres are sampled from
    ``pos`` this never happens: the centre itself is at distance 0). A centre whose cloud in ``pos`` is empty gets
    no neighbour.

    The dense form returns a fixed ``(B, M, max_neighbors)`` index: slots past a centre's neighbour count repeat its
    first neighbour (PointNet++'s padding), which max pooling ignores; ``return_mask=True`` also returns which slots
    hold a distinct neighbour within ``radius``.

    Args:
        pos: Points searched.
        centers: Query centres, same number of coordinates.
        radius: Ball radius, > 0.
        max_neighbors: Most neighbours per centre, >= 1.
        batch: Cloud index of each point of ``pos``, sorted; only for ``(N, D)`` input; ``None`` means one cloud.
        batch_centers: Cloud index of each centre, sorted; only for ``(M, D)`` input; ``None`` means one cloud.
        return_mask: Dense input only: also return the mask of the slots holding a neighbour within ``radius``.

    Shape:
        - pos: (N, D), centers: (M, D) with batch (N,), batch_centers (M,); or pos: (B, N, D), centers: (B, M, D).
        - output: ``(row, col)``, each (E,) int64: ``centers[row[e]]`` has neighbour ``pos[col[e]]``, sorted by
          ``row`` then ``col``; or for dense input a (B, M, max_neighbors) int64 index into each cloud's N (and a
          bool mask of the same shape with ``return_mask=True``).

    Example:
        >>> pos = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [2, 0, 0]])
        >>> ball_query(pos, pos[:1], radius=1.0, max_neighbors=4)
        (tensor([0, 0]), tensor([0, 1]))
    """
    caller = "ball_query"
    _check_points("pos", pos, caller)
    _check_points("centers", centers, caller)
    if not (isinstance(radius, (int, float)) and not isinstance(radius, bool)) or not radius > 0:
        raise ValueError(f"`radius` should be a positive number, but got {radius!r} instead.")
    if isinstance(max_neighbors, bool) or not isinstance(max_neighbors, int) or max_neighbors < 1:
        raise ValueError(f"`max_neighbors` should be a positive int, but got {max_neighbors!r} instead.")
    same_batch = pos.ndim != 3 or pos.shape[0] == centers.shape[0]
    if pos.ndim != centers.ndim or pos.shape[-1] != centers.shape[-1] or not same_batch:
        raise ValueError(f"{caller} expects pos and centers of shapes (N, D), (M, D) or (B, N, D), (B, M, D), "
                         f"but got {tuple(pos.shape)} and {tuple(centers.shape)} instead.")
    dense_input = pos.ndim == 3
    if dense_input and (batch is not None or batch_centers is not None):
        raise ValueError(f"{caller}: batch vectors are only for (N, D) input, but got pos {tuple(pos.shape)}.")
    if return_mask and not dense_input:
        raise ValueError(f"{caller}: return_mask is only for dense (B, N, D) input.")
    if dense_input and pos.shape[1] == 0:
        raise ValueError(f"{caller}: dense clouds of 0 points have no neighbours to index.")
    if dense_input:
        p_dense, c_dense = pos.detach(), centers.detach()
        p_mask = c_mask = None
    else:
        _check_batch("batch", batch, pos.shape[0], caller)
        _check_batch("batch_centers", batch_centers, centers.shape[0], caller)
        num_clouds = _num_clouds(batch, batch_centers)
        p_dense, p_mask, p_offsets = _pad(pos.detach(), _counts(batch, pos.shape[0], num_clouds, pos.device))
        c_dense, c_mask, c_offsets = _pad(
            centers.detach(), _counts(batch_centers, centers.shape[0], num_clouds, centers.device)
        )
    n_max = p_dense.shape[1]
    if n_max == 0:  # no cloud has points (PyG-style input): no pairs
        empty = torch.zeros(0, dtype=torch.long, device=pos.device)
        return empty, empty.clone()
    distance = _squared_distances(c_dense, p_dense, exact=True)  # (B, M, N)
    if p_mask is not None:
        distance.masked_fill_(~p_mask[:, None, :], math.inf)
    inside = distance <= radius * radius
    slot = torch.arange(n_max, device=pos.device)
    # Inside points first in index order, then the rest: the first max_neighbors keys are the group.
    key = torch.where(inside, slot, slot + n_max)
    k_eff = min(max_neighbors, n_max)
    group = torch.topk(key, k_eff, dim=-1, largest=False, sorted=True).indices  # (B, M, k_eff)
    count = inside.sum(-1, keepdim=True).clamp(max=k_eff)
    nearest = distance.argmin(-1, keepdim=True)  # empty neighbourhoods: the nearest point
    first = torch.where(count > 0, group[..., :1], nearest)
    in_ball = torch.arange(k_eff, device=pos.device) < count
    group = torch.where(in_ball, group, first)
    if dense_input:
        if k_eff < max_neighbors:  # fewer points than max_neighbors: pad with the first neighbour
            group = torch.cat([group, first.expand(*group.shape[:2], max_neighbors - k_eff)], -1)
            in_ball = torch.cat([in_ball, in_ball.new_zeros(*in_ball.shape[:2], max_neighbors - k_eff)], -1)
        return (group, in_ball) if return_mask else group
    # Flat pairs: the in-ball slots, or the first slot of an empty neighbourhood (if its cloud has points).
    has_points = torch.isfinite(distance.gather(2, nearest))
    keep = in_ball.clone()
    keep[..., 0] |= (count[..., 0] == 0) & has_points[..., 0]
    keep &= c_mask[:, :, None]
    row = (torch.arange(c_dense.shape[1], device=pos.device) + c_offsets[:, None])[:, :, None].expand_as(group)
    col = group + p_offsets[:, None, None]
    return row[keep], col[keep]
