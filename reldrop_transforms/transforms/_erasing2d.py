"""RelevanceErasing2d: Random Erasing centred on what the model relies on most (the published Block/Patch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive_int, check_range
from ..functional import erasing_draws, relevance_erasing_mask
from ._image import RelevanceImageTransform

__all__ = ["RelevanceErasing2d"]


class RelevanceErasing2d(RelevanceImageTransform):
    """Relevance-guided Random Erasing for image batches (the authors' best shipped image configuration).

    For each sample selected by a coin with probability ``p``, the LRP relevance of the current model is computed
    (as :class:`RelevanceDropout2d` does) and a rectangle as ``v2.RandomErasing`` draws it (area fraction
    ``U(scale)``, log-uniform aspect ratio in ``ratio``, up to 10 tries to fit) is centred on one of the sample's
    ``top_k`` most relevant pixels, clipped at the border, and filled with ``value``. ``num_patches > 1`` is the
    Patch variant: that many rectangles, each with the area divided by ``num_patches``, centred on pixels drawn
    from the top-k. A sample with flat relevance gets a uniformly random centre. Fully vectorised over the batch.

    Args:
        model: The model being trained; held by reference.
        p: Probability that a sample is erased (the rule for ``p`` of :class:`RelevanceDropout2d`).
        scale: Range of the erased area fraction. With ``num_patches > 1`` each patch draws its own fraction
            from it, divided by ``num_patches`` (together the mean of the draws, less where patches overlap).
        ratio: Range of the aspect ratio (height / width), sampled log-uniformly.
        value: Fill value, a number or one per channel, in the space of the tensor as given.
        top_k: The centre is drawn uniformly from this many most relevant pixels (1: the most relevant one).
        num_patches: Rectangles per sample (1: Block; more: Patch).
        composite, epsilon, backend, labels_getter, generator, dtype, cuda_graphs: As in
            :class:`RelevanceDropout2d`.

    Shape:
        - images: (B, C, H, W), floating, on the model's device; output the same.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten(), torch.nn.Linear(8, 10))
        >>> images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        >>> t = RelevanceErasing2d(model, p=0.5, scale=(0.02, 0.4), top_k=1)
        >>> images, labels = t(images, labels)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.4),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float | Sequence[float] = 0.0,
        top_k: int = 1,
        num_patches: int = 1,
        composite="epsilon_flat",
        epsilon: float = 1e-3,
        backend: str = "auto",
        labels_getter: str | Callable[[Any], Any] | None = "default",
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(model, p=p, value=value, composite=composite, epsilon=epsilon, backend=backend,
                         labels_getter=labels_getter, generator=generator, dtype=dtype, cuda_graphs=cuda_graphs)
        self.scale, self.ratio, self.top_k, self.num_patches = scale, ratio, top_k, num_patches
        self.check_settings()

    def check_settings(self) -> None:
        super().check_settings()
        self.scale = check_range("scale", self.scale, 0.0, 1.0)
        self.ratio = check_range("ratio", self.ratio, 1e-12)
        self.top_k = check_positive_int("top_k", self.top_k)
        self.num_patches = check_positive_int("num_patches", self.num_patches)

    def draw(self, batch_size: int, image: Tensor) -> tuple[Tensor, ...]:
        return erasing_draws(batch_size, self.num_patches, generator=self.generator, device=image.device)

    def mask_rows(self, relevance: Tensor, *draws: Tensor) -> Tensor:
        return relevance_erasing_mask(relevance, scale=self.scale, ratio=self.ratio, top_k=self.top_k,
                                      num_patches=self.num_patches, draws=draws)

    def mask_key(self) -> tuple:
        return (self.scale, self.ratio, self.top_k, self.num_patches)
