"""RelevanceDropout2d: the RelDrop pixel mask as a torchvision ``transforms.v2`` batch transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..functional import relevance_dropout_mask
from ._common import DropoutSettings
from ._image import RelevanceImageTransform

__all__ = ["RelevanceDropout2d"]


class RelevanceDropout2d(DropoutSettings, RelevanceImageTransform):
    """Relevance-driven Input Dropout (RelDrop) for image batches.

    For each sample selected by a coin with probability ``p``, the LRP relevance of the *current* model is
    computed (eval mode, on the model's device, training state untouched), summed over channels, min-max
    normalised to ``Rn``, and the pixels where ``alpha * U + (1 - alpha) * Rn >= 1 - beta`` (``U`` uniform
    noise) are set to ``value`` in every channel. Labels and other entries pass through unchanged.

    Use it on batches: in ``v2.Compose`` after the DataLoader (with ``v2.CutMix``/``v2.MixUp`` in either order),
    as a collate function (:class:`~reldrop_transforms.RelevanceCollate`, ``num_workers=0``), or around the loader
    (:class:`~reldrop_transforms.RelevanceLoader`, workers allowed). It never runs in a DataLoader worker.

    Args:
        model: The model being trained (also when wrapped in DDP or ``torch.compile``). Held by reference, not
            registered as a submodule: ``.to()``/``.train()`` on a pipeline do not reach it.
        alpha: Weight of the random term, in [0, 1]. 0 drops by relevance alone, 1 is plain random dropout.
        beta: Drop threshold offset, in [0, 1]: the drop rate at ``alpha = 1``.
        p: Probability that a sample is masked at all. One coin per sample comes first, then the noise of the whole
            batch, both from ``generator``; eagerly only the selected samples are attributed (with CUDA graphs all
            of them, with the same result).
        value: Fill value, a number or one per channel, in the space of the tensor as given (``0.0`` is the
            dataset mean after ``Normalize``).
        composite: LRP rules: ``"epsilon_flat"`` (the paper's), a zennit composite name, or a zennit ``Composite``.
        epsilon: Stabiliser of the Epsilon rule.
        backend: Attribution backend, see :func:`reldrop_transforms.attribution.relevance`.
        labels_getter: ``"default"`` (the second item of ``(images, labels)``, or a ``"labels"`` key), a callable
            returning the labels, or ``None`` to attribute the predicted class. Labels may be class indices
            ``(B,)`` or soft labels ``(B, K)`` (e.g. after CutMix).
        generator: Source of the coins and the mask noise (on the model's device for speed).
        dtype: Attribute under autocast in this dtype, ``torch.bfloat16`` or ``torch.float16``; ``None``
            (default): the model's own precision.
        cuda_graphs: On CUDA, with the fast engine, capture the whole attribution and mask in a CUDA graph per
            input shape and replay it (see :meth:`reldrop_transforms.attribution.Attributor.then`). Every sample is
            then attributed (fixed shapes), and one synchronisation per batch checks labels and finiteness. Keeps
            one graph's memory per shape (up to 4). CPU, and any ``dtype``, stay eager.

    Shape:
        - images: (B, C, H, W), floating, on the model's device.
        - labels: (B,) integer or (B, K) floating.
        - output: same as the input; a ``tv_tensors.Image`` stays one.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten(), torch.nn.Linear(4, 10))
        >>> t = RelevanceDropout2d(model, p=1.0)
        >>> images, labels = t(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))
        >>> images.shape
        torch.Size([8, 3, 16, 16])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float = 0.3,
        beta: float = 0.5,
        p: float = 0.5,
        value: float | Sequence[float] = 0.0,
        composite="epsilon_flat",
        epsilon: float = 1e-3,
        backend: str = "auto",
        labels_getter: str | Callable[[Any], Any] | None = "default",
        generator: torch.Generator | None = None,
        cuda_graphs: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(model, p=p, value=value, composite=composite, epsilon=epsilon, backend=backend,
                         labels_getter=labels_getter, generator=generator, dtype=dtype, cuda_graphs=cuda_graphs)
        self.alpha, self.beta = alpha, beta
        self.check_settings()

    def draw(self, batch_size: int, image: Tensor) -> tuple[Tensor, ...]:
        return self.noise(image, (batch_size, *image.shape[2:]))  # one number per pixel

    def mask_rows(self, relevance: Tensor, *draws: Tensor) -> Tensor:
        return relevance_dropout_mask(relevance, self.alpha, self.beta, noise=draws[0] if draws else None)

    def mask_key(self) -> tuple:
        return (self.alpha, self.beta)
