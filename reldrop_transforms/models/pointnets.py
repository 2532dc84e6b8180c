"""Small point-cloud classifiers built only from layers that LRP tools can see.

Every layer is a ``torch.nn`` module (``Linear``, ``BatchNorm1d``, ``ReLU``, ``Dropout``, ``AdaptiveMaxPool1d``) or a
PyG aggregation module (``MaxAggregation``), each ``Linear`` directly followed by its ``BatchNorm1d`` inside an
``nn.Sequential`` so that zennit's ``SequentialMergeBatchNorm`` merges them. The neighbourhoods come from
:mod:`reldrop_transforms.models.ops` (plain PyTorch; no pyg-lib or torch-cluster).

Each model takes either a dense batch ``(B, N, C)`` (``C = in_channels``: xyz first, then e.g. normals) or a PyG
``Data``/``Batch`` with ``pos`` ``(N_total, 3)``, optional ``x`` ``(N_total, F)`` and ``batch``; the per-point input
is then ``[pos, x]``, so ``in_channels = 3 + F``. Both return logits ``(B, num_classes)``.

Fast LRP engine (:mod:`reldrop_transforms.attribution._fast`): all three run on it, dense and PyG. The edge features
of :class:`DGCNN` and the relative coordinates of :class:`PointNet2` (subtractions outside any module) pass relevance
by their ordinary backward, as in zennit (tests/attribution/test_zoo.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn.aggr import MaxAggregation

from .ops import ball_query, farthest_point_sampling, knn

__all__ = ["PointNet", "DGCNN", "PointNet2", "EdgeConv", "SetAbstraction"]


# -- building blocks ---------------------------------------------------------------------------------------------------
def shared_mlp(channels: Sequence[int]) -> nn.Sequential:
    """``Linear -> BatchNorm1d -> ReLU`` for each consecutive pair of ``channels``, applied to rows (points)."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


def classifier_head(in_channels: int, hidden: Sequence[int], num_classes: int, dropout: float) -> nn.Sequential:
    """``(Linear -> BatchNorm1d -> ReLU -> Dropout)`` per hidden width, then ``Linear`` to the logits."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip([in_channels, *hidden[:-1]], hidden):
        layers += [nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(hidden[-1] if hidden else in_channels, num_classes))
    return nn.Sequential(*layers)


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` should be an int >= {minimum}, but got {value!r} instead.")


def _check_widths(name: str, widths) -> tuple[int, ...]:
    widths = tuple(widths)
    for width in widths:
        _check_int(name, width)
    return widths


def _read_input(
    model: nn.Module, inpt, in_channels: int
) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor | None, int]:
    """``(points, pos, x, batch, num_clouds)``: ``points`` for a dense batch (and ``pos``/``x`` its slices), else
    ``None`` and the PyG attributes (``batch`` ``None`` for a single cloud)."""
    name = type(model).__name__
    if isinstance(inpt, Tensor):
        if inpt.ndim != 3 or inpt.shape[-1] != in_channels:
            raise ValueError(
                f"{name} expects dense points of shape (B, N, {in_channels}), but got {tuple(inpt.shape)} instead."
            )
        if not inpt.is_floating_point():
            raise TypeError(f"{name} expects floating-point points, but got dtype {inpt.dtype}.")
        extra = inpt[..., 3:] if in_channels > 3 else None
        return inpt, inpt[..., :3], extra, None, inpt.shape[0]
    pos = getattr(inpt, "pos", None)
    if not isinstance(pos, Tensor):
        raise TypeError(
            f"{name} expects a dense tensor (B, N, C) or a PyG Data/Batch with `pos`, but got "
            f"{type(inpt).__name__} (pos: {type(pos).__name__})."
        )
    if pos.ndim != 2 or pos.shape[1] != 3 or not pos.is_floating_point():
        raise ValueError(f"{name} expects data.pos of shape (N, 3), floating, but got {tuple(pos.shape)} "
                         f"of dtype {pos.dtype} instead.")
    x = getattr(inpt, "x", None)
    if x is not None and (not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] != pos.shape[0]):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} expects data.x of shape (N, F) = ({pos.shape[0]}, F) or None, but got {shape}.")
    channels = 3 + (x.shape[1] if x is not None else 0)
    if channels != in_channels:
        raise ValueError(
            f"{name} was built for in_channels={in_channels}, but the data has {channels} point channels "
            f"(pos: 3, x: {channels - 3})."
        )
    batch = getattr(inpt, "batch", None)
    if batch is not None and (not isinstance(batch, Tensor) or batch.shape != (pos.shape[0],)):
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"{name} expects data.batch of shape ({pos.shape[0]},) or None, but got {shape}.")
    num_clouds = getattr(inpt, "num_graphs", None)
    if num_clouds is None:
        num_clouds = 1 if batch is None or batch.numel() == 0 else int(batch.max()) + 1
    return None, pos, x, batch, int(num_clouds)


def _flat_batch(pos: Tensor, x: Tensor | None, batch: Tensor | None, points: Tensor | None):
    """Dense ``(B, N, .)`` slices to PyG-style rows and a batch vector; a missing batch vector to zeros."""
    if points is not None:
        b, n = points.shape[:2]
        pos = pos.reshape(b * n, 3)
        x = x.reshape(b * n, -1) if x is not None else None
        batch = torch.arange(b, device=pos.device).repeat_interleave(n)
    elif batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    return pos, x, batch


def _neighbor_table(row: Tensor, col: Tensor, num_points: int, k: int) -> Tensor:
    """``(row, col)`` pairs sorted by ``row`` (at most ``k`` per row, at least one) as a ``(num_points, k)`` table;
    rows with fewer pairs repeat their first neighbour."""
    if row.numel() == num_points * k:
        return col.view(num_points, k)
    counts = torch.bincount(row, minlength=num_points)
    start = torch.cumsum(counts, 0) - counts
    table = col[start].unsqueeze(1).repeat(1, k)
    table[row, torch.arange(row.numel(), device=row.device) - start[row]] = col
    return table


class EdgeConv(nn.Module):
    """DGCNN's EdgeConv: a kNN graph in feature space per cloud, edge features ``[x_i, x_j - x_i]``, a shared MLP
    and the maximum over the ``k`` neighbours (``nn.AdaptiveMaxPool1d`` over a ``(N, C, k)`` view).

    Args:
        in_channels: Feature channels per point.
        out_channels: Output channels per point.
        k: Neighbours per point (the point itself included). A cloud with fewer than ``k`` points uses all of them,
            its slots past the cloud size repeating the point itself (which the maximum ignores).

    Shape:
        - x: (N_total, in_channels); batch: (N_total,) sorted cloud indices.
        - output: (N_total, out_channels).
    """

    def __init__(self, in_channels: int, out_channels: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.mlp = shared_mlp([2 * in_channels, out_channels])
        self.pool = nn.AdaptiveMaxPool1d(1)

    def forward(self, x: Tensor, batch: Tensor) -> Tensor:
        n, c = x.shape
        row, col = knn(x, x, self.k, batch, batch)  # row: centre i, col: neighbour j, self first
        neighbors = _neighbor_table(row, col, n, self.k)  # (N, k)
        x_i = x.unsqueeze(1).expand(n, self.k, c)
        edges = torch.cat([x_i, x[neighbors] - x_i], dim=-1).view(n * self.k, 2 * c)
        h = self.mlp(edges).view(n, self.k, -1)
        return self.pool(h.transpose(1, 2)).squeeze(-1)


class SetAbstraction(nn.Module):
    """PointNet++ set abstraction: farthest point sampling, ball-query grouping with coordinates relative to the
    centre, a shared MLP on ``[x_j, pos_j - pos_c]`` and the maximum over each group.

    Args:
        ratio: Fraction of each cloud kept as centres (farthest point sampling from its first point).
        radius: Ball radius of the groups.
        max_neighbors: Most points per group (the first ones in index order; see :func:`ball_query`).
        channels: Widths of the shared MLP, starting with ``F + 3`` (``F`` feature channels, 3 relative coordinates).

    Shape:
        - x: (N_total, F) or None; pos: (N_total, 3); batch: (N_total,) sorted cloud indices.
        - output: ``(x, pos, batch)`` of the centres: (M_total, channels[-1]), (M_total, 3), (M_total,).
    """

    def __init__(self, ratio: float, radius: float, max_neighbors: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.ratio = ratio
        self.radius = radius
        self.max_neighbors = max_neighbors
        self.mlp = shared_mlp(channels)
        self.aggr = MaxAggregation()

    def forward(self, x: Tensor | None, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        index = farthest_point_sampling(pos, batch, ratio=self.ratio)
        centers, batch_centers = pos[index], batch[index]
        row, col = ball_query(pos, centers, self.radius, self.max_neighbors, batch, batch_centers)
        relative = pos[col] - centers[row]
        features = relative if x is None else torch.cat([x[col], relative], dim=-1)
        out = self.aggr(self.mlp(features), row, dim_size=centers.shape[0])
        return out, centers, batch_centers


# -- models ------------------------------------------------------------------------------------------------------------
class PointNet(nn.Module):
    """PointNet without input/feature transforms: a shared per-point MLP, a global max pool, a classifier.

    Dense input ``(B, N, C)`` runs the point MLP on the ``B * N`` rows and pools with ``nn.AdaptiveMaxPool1d(1)``
    over ``(B, H, N)``; PyG input runs it on ``[pos, x]`` and pools per cloud with ``MaxAggregation()(h, batch)``.
    Both give the same logits for the same clouds, and are invariant to the order of the points (in eval mode).

    Args:
        in_channels: Channels per point: 3 for xyz, 6 with normals (PyG: 3 + ``x.shape[1]``).
        num_classes: Number of classes.
        hidden: Widths of the shared point MLP; the last one is the global feature size.
        head: Hidden widths of the classifier.
        dropout: Dropout rate in the classifier.

    Shape:
        - inpt: (B, N, in_channels), or a PyG Data/Batch with pos (N_total, 3), x (N_total, in_channels - 3) or
          None, batch (N_total,).
        - output: (B, num_classes).

    Example:
        >>> model = PointNet(3, num_classes=10).eval()
        >>> model(torch.randn(2, 128, 3)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: Sequence[int] = (64, 128, 256),
        head: Sequence[int] = (128,),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels)
        _check_int("num_classes", num_classes)
        hidden = _check_widths("hidden", hidden)
        if not hidden:
            raise ValueError("`hidden` should hold at least one width, but got ().")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.point_mlp = shared_mlp([in_channels, *hidden])
        self.pool = MaxAggregation()  # PyG input: per-cloud max over the batch vector
        self.dense_pool = nn.AdaptiveMaxPool1d(1)  # dense input: max over N
        self.head = classifier_head(hidden[-1], _check_widths("head", head), num_classes, dropout)

    def forward(self, inpt) -> Tensor:
        points, pos, x, batch, num_clouds = _read_input(self, inpt, self.in_channels)
        if points is not None:
            b, n, c = points.shape
            h = self.point_mlp(points.reshape(b * n, c))
            h = self.dense_pool(h.view(b, n, -1).transpose(1, 2)).flatten(1)
        else:
            features = pos if x is None else torch.cat([pos, x], dim=-1)
            h = self.point_mlp(features)
            if batch is None:
                batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
            h = self.pool(h, batch, dim_size=num_clouds)
        return self.head(h)


class DGCNN(nn.Module):
    """Dynamic Graph CNN: EdgeConv layers on kNN graphs recomputed in feature space, their outputs concatenated and
    embedded, a global max pool per cloud, a classifier.

    Dense input ``(B, N, C)`` is flattened to ``B`` clouds of ``N`` rows and runs the PyG path. The first kNN graph
    is built on all input channels (``[pos, x]``).

    Args:
        in_channels: Channels per point: 3 for xyz, 6 with normals (PyG: 3 + ``x.shape[1]``).
        num_classes: Number of classes.
        k: Neighbours per point, the point itself included.
        hidden: Output widths of the EdgeConv layers.
        embed: Width of the per-point embedding before the global pool.
        head: Hidden widths of the classifier.
        dropout: Dropout rate in the classifier.

    Shape:
        - inpt: (B, N, in_channels), or a PyG Data/Batch with pos (N_total, 3), x (N_total, in_channels - 3) or
          None, batch (N_total,).
        - output: (B, num_classes).

    Example:
        >>> model = DGCNN(3, num_classes=10, k=8).eval()
        >>> model(torch.randn(2, 64, 3)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        k: int = 20,
        hidden: Sequence[int] = (32, 32, 64),
        embed: int = 256,
        head: Sequence[int] = (128,),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels)
        _check_int("num_classes", num_classes)
        _check_int("k", k)
        _check_int("embed", embed)
        hidden = _check_widths("hidden", hidden)
        if not hidden:
            raise ValueError("`hidden` should hold at least one width, but got ().")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.k = k
        widths = [in_channels, *hidden]
        self.convs = nn.ModuleList(EdgeConv(c_in, c_out, k) for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.embed = shared_mlp([sum(hidden), embed])
        self.pool = MaxAggregation()
        self.head = classifier_head(embed, _check_widths("head", head), num_classes, dropout)

    def forward(self, inpt) -> Tensor:
        points, pos, x, batch, num_clouds = _read_input(self, inpt, self.in_channels)
        if points is not None:
            b, n, c = points.shape
            h = points.reshape(b * n, c)
            batch = torch.arange(b, device=points.device).repeat_interleave(n)
        else:
            h = pos if x is None else torch.cat([pos, x], dim=-1)
            if batch is None:
                batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        outputs = []
        for conv in self.convs:
            h = conv(h, batch)
            outputs.append(h)
        h = self.embed(torch.cat(outputs, dim=-1))
        return self.head(self.pool(h, batch, dim_size=num_clouds))


class PointNet2(nn.Module):
    """PointNet++ (single-scale grouping): two set abstractions, a global set abstraction on ``[x, pos]`` with a max
    pool per cloud, a classifier.

    Dense input ``(B, N, C)`` is split into ``pos = points[..., :3]`` and features ``points[..., 3:]`` and runs the
    PyG path. Centres are sampled deterministically (farthest point sampling from each cloud's first point), so the
    logits depend on which point comes first. The radii assume clouds scaled to about the unit sphere (as PyG's
    ``NormalizeScale``).

    Args:
        in_channels: Channels per point including xyz: 3, or 6 with normals (PyG: 3 + ``x.shape[1]``).
        num_classes: Number of classes.
        ratios: Fraction of centres kept by each set abstraction.
        radii: Ball radius of each set abstraction.
        max_neighbors: Most points per group in each set abstraction.
        channels: Widths of the shared MLPs of the two set abstractions and the global one (inputs excluded).
        head: Hidden widths of the classifier.
        dropout: Dropout rate in the classifier.

    Shape:
        - inpt: (B, N, in_channels), or a PyG Data/Batch with pos (N_total, 3), x (N_total, in_channels - 3) or
          None, batch (N_total,).
        - output: (B, num_classes).

    Example:
        >>> model = PointNet2(3, num_classes=10).eval()
        >>> model(torch.randn(2, 64, 3)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ratios: Sequence[float] = (0.5, 0.25),
        radii: Sequence[float] = (0.2, 0.4),
        max_neighbors: Sequence[int] = (32, 32),
        channels: Sequence[Sequence[int]] = ((32, 32, 64), (64, 64, 128), (128, 256)),
        head: Sequence[int] = (128,),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, minimum=3)
        _check_int("num_classes", num_classes)
        if not (len(ratios) == len(radii) == len(max_neighbors) == len(channels) - 1 >= 1):
            raise ValueError(
                "`ratios`, `radii` and `max_neighbors` should have one entry per set abstraction and `channels` one "
                f"more (the global one), but got {len(ratios)}, {len(radii)}, {len(max_neighbors)} and {len(channels)}."
            )
        for ratio in ratios:
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"`ratios` should be in the interval (0.0, 1.0], but got {ratio} instead.")
        for radius in radii:
            if not radius > 0:
                raise ValueError(f"`radii` should be positive, but got {radius} instead.")
        for count in max_neighbors:
            _check_int("max_neighbors", count)
        channels = [_check_widths("channels", widths) for widths in channels]
        if not all(channels):
            raise ValueError("`channels` should hold at least one width per set abstraction.")
        self.in_channels = in_channels
        self.num_classes = num_classes
        features = in_channels - 3
        levels = []
        for ratio, radius, count, widths in zip(ratios, radii, max_neighbors, channels[:-1]):
            levels.append(SetAbstraction(ratio, radius, count, [features + 3, *widths]))
            features = widths[-1]
        self.levels = nn.ModuleList(levels)
        self.global_mlp = shared_mlp([features + 3, *channels[-1]])
        self.pool = MaxAggregation()
        self.head = classifier_head(channels[-1][-1], _check_widths("head", head), num_classes, dropout)

    def forward(self, inpt) -> Tensor:
        points, pos, x, batch, num_clouds = _read_input(self, inpt, self.in_channels)
        pos, x, batch = _flat_batch(pos, x, batch, points)
        for level in self.levels:
            x, pos, batch = level(x, pos, batch)
        h = self.global_mlp(torch.cat([x, pos], dim=-1))
        return self.head(self.pool(h, batch, dim_size=num_clouds))
