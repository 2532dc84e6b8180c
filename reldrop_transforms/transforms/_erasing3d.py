"""RelevanceErasing3d: drop the points within a ball around one of each cloud's most relevant points."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive_int, check_range
from ..functional import ball_draws, keep_least_relevant, relevance_ball_mask
from ._points import RelevancePointTransform

__all__ = ["RelevanceErasing3d"]


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
        >>> from torch_geometric.data import Batch, Data
        >>> from reldrop_transforms.models import PointNet
        >>> model = PointNet(in_channels=3, num_classes=4)
        >>> batch = Batch.from_data_list([Data(pos=torch.randn(50, 3), y=torch.tensor([2])) for _ in range(4)])
        >>> t = RelevanceErasing3d(model, radius=(0.1, 0.3), top_k=1, fill="remove")
        >>> out = t(batch)
        >>> out.num_graphs, bool(out.num_nodes < batch.num_nodes)
        (4, True)
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
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(model, p=p, fill=fill, composite=composite, epsilon=epsilon, backend=backend,
                         labels_getter=labels_getter, forward_fn=forward_fn, generator=generator,
                         channels_first=channels_first, keys=keys, dtype=dtype, cuda_graphs=cuda_graphs)
        self.radius, self.top_k = radius, top_k
        self.check_settings()

    def check_settings(self) -> None:
        super().check_settings()
        self.radius = check_range("radius", self.radius, 0.0)
        self.top_k = check_positive_int("top_k", self.top_k)

    def draw(self, num_clouds: int, pos: Tensor) -> tuple[Tensor, ...]:
        return (ball_draws(num_clouds, dtype=pos.dtype, generator=self.generator, device=pos.device),)

    def mask_rows(self, relevance: Tensor, pos: Tensor, *draws: Tensor, batch: Tensor | None = None,
                  num_segments: int | None = None) -> Tensor:
        mask = relevance_ball_mask(relevance, pos, radius=self.radius, top_k=self.top_k, batch=batch,
                                   num_segments=num_segments, draws=draws[0])
        return keep_least_relevant(mask, relevance, batch=batch, num_segments=num_segments)

    def mask_key(self) -> tuple:
        return (self.radius, self.top_k)
