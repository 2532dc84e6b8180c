"""RelevanceDropout3d: the RelDrop point mask for dense point batches and PyTorch Geometric batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..functional import keep_least_relevant, relevance_dropout_mask
from ._common import DropoutSettings
from ._erasing3d import RelevanceErasing3d
from ._points import RelevancePointTransform

__all__ = ["RelevanceDropout3d", "RelevanceErasing3d"]


class RelevanceDropout3d(DropoutSettings, RelevancePointTransform):
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
        p: Probability that a cloud is masked at all. One coin per cloud comes first, then the noise of the whole
            batch, both from ``generator``; only the selected clouds are attributed eagerly (a PyG batch's as a
            batch of their own), CUDA graphs attribute all of them, with the same result.
        fill: ``"zero"`` (all channels set to 0, the paper), ``"first"`` (copy the cloud's first kept point:
            PointNet++'s convention), a number, or ``"remove"`` (PyG batches only).
        composite: LRP rules, see :func:`reldrop_transforms.attribution.relevance`.
        epsilon: Stabiliser of the Epsilon rule.
        backend: ``"auto"``, ``"fast"`` or ``"zennit"``.
        labels_getter: ``"default"``: the second argument of ``t(points, labels)``, the ``"labels"`` entry of a
            dict sample (whose points are its first tensor or ``Data``/``Batch`` other than the labels), or
            ``data.y`` for PyG input; a callable ``labels_getter(inputs)``; or ``None`` for the predicted class.
        forward_fn: ``forward_fn(model, batch) -> logits`` for PyG models with other call signatures (default
            ``model(batch)``); it receives the unwrapped module. PyG input only: a dense batch with it raises.
        generator: Source of the coins and the mask noise.
        channels_first: Dense input is ``(B, C, N)`` instead of ``(B, N, C)``.
        keys: The PyG node attributes that are attributed (and whose relevance is summed per point).
        dtype: Attribute under autocast in this dtype, ``torch.bfloat16`` or ``torch.float16``; ``None``: the
            model's own precision.
        cuda_graphs: Capture attribution and mask of CUDA batches in one CUDA graph per shape (see
            :class:`~reldrop_transforms.RelevanceDropout2d`): dense batches, and PyG batches keyed by the shapes of
            their tensors (up to 4 graphs; the model's forward must not synchronise with the host).

    Shape:
        - dense points: (B, N, C) (or (B, C, N)), floating, on the model's device; output the same.
        - labels: (B,) integer or (B, K) floating.
        - PyG: ``Batch`` with ``pos`` (N, 3), optional ``x`` (N, F), ``batch`` (N,); ``y`` (num_graphs,).

    Example:
        >>> import torch_geometric
        >>> from torch_geometric.data import Data
        >>> from reldrop_transforms import RelevanceLoader
        >>> from reldrop_transforms.models import PointNet
        >>> model = PointNet(in_channels=3, num_classes=4)
        >>> dataset = [Data(pos=torch.randn(20, 3), y=torch.tensor([i % 4])) for i in range(64)]
        >>> t = RelevanceDropout3d(model, fill="remove")
        >>> for batch in RelevanceLoader(torch_geometric.loader.DataLoader(dataset, batch_size=32), t):
        ...     loss = torch.nn.functional.cross_entropy(model(batch), batch.y)
        >>> bool(batch.num_nodes < 32 * 20)  # the dropped points are gone
        True
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
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(model, p=p, fill=fill, composite=composite, epsilon=epsilon, backend=backend,
                         labels_getter=labels_getter, forward_fn=forward_fn, generator=generator,
                         channels_first=channels_first, keys=keys, dtype=dtype, cuda_graphs=cuda_graphs)
        self.alpha, self.beta = alpha, beta
        self.check_settings()

    def draw(self, num_clouds: int, pos: Tensor) -> tuple[Tensor, ...]:
        return self.noise(pos, pos.shape[:-1])  # one number per point

    def mask_rows(self, relevance: Tensor, pos: Tensor, *draws: Tensor, batch: Tensor | None = None,
                  num_segments: int | None = None) -> Tensor:
        mask = relevance_dropout_mask(relevance, self.alpha, self.beta, noise=draws[0] if draws else None,
                                      batch=batch, num_segments=num_segments)
        return keep_least_relevant(mask, relevance, batch=batch, num_segments=num_segments)

    def mask_key(self) -> tuple:
        return (self.alpha, self.beta)
