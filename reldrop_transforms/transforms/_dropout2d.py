"""RelevanceDropout2d: the RelDrop pixel mask as a torchvision ``transforms.v2`` batch transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_unit_interval
from ..attribution import relevance
from ..attribution._api import check_not_in_worker, output_relevance_nosync
from ..attribution._fast import FAST_COMPOSITES, UnsupportedModel, fast_relevance, known_refusal
from ..attribution._graphs import GraphCache
from ..attribution._state import preserved_model_state, unwrap_model
from ..functional import relevance_dropout_mask, sample_coins, uniform_like
from ._image import RelevanceImageTransform

__all__ = ["RelevanceDropout2d"]


class RelevanceDropout2d(RelevanceImageTransform):
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
        p: Probability that a sample is masked at all; only selected samples are attributed.
        value: Fill value, a number or one per channel, in the space of the tensor as given (``0.0`` is the
            dataset mean after ``Normalize``).
        composite: LRP rules: ``"epsilon_flat"`` (the paper's), a zennit composite name, or a zennit ``Composite``.
        epsilon: Stabiliser of the Epsilon rule.
        backend: Attribution backend, see :func:`reldrop_transforms.attribution.relevance`.
        labels_getter: ``"default"`` (the second item of ``(images, labels)``, or a ``"labels"`` key), a callable
            returning the labels, or ``None`` to attribute the predicted class. Labels may be class indices
            ``(B,)`` or soft labels ``(B, K)`` (e.g. after CutMix).
        generator: Source of the coins and the mask noise (on the model's device for speed).
        dtype: Attribute under autocast in this dtype (e.g. ``torch.bfloat16``); ``None`` (default): the model's
            own precision.
        cuda_graphs: On CUDA, with the fast engine, capture the whole attribution and mask in a CUDA graph per
            input shape and replay it (see :mod:`reldrop_transforms.attribution._graphs`). Every sample is then
            attributed (fixed shapes), the coin only decides which masks are applied, and one synchronisation per
            batch checks labels and finiteness. Keeps one graph's memory per shape (up to 4). CPU, and any
            ``dtype``, stay eager.

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
                         labels_getter=labels_getter, generator=generator)
        self.alpha = check_unit_interval("alpha", alpha)
        self.beta = check_unit_interval("beta", beta)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype should be a torch.dtype or None, but got {type(dtype).__name__}.")
        self.dtype = dtype
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs should be a bool, but got {type(cuda_graphs).__name__}.")
        self.cuda_graphs = cuda_graphs
        self._graphs = GraphCache()

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_graphs"] = None  # captured CUDA graphs do not travel
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._graphs = GraphCache()

    def _uses_graphs(self, image: Tensor) -> bool:
        # The captured body attributes in the model's precision: with dtype= the eager path honours autocast.
        # A model the fast engine already refused is not captured again on every batch.
        return (
            self.cuda_graphs and image.is_cuda and self.dtype is None and self.backend in ("auto", "fast")
            and isinstance(self.composite, str) and self.composite in FAST_COMPOSITES
            and known_refusal(unwrap_model(self.model)) is None
        )

    def _graph_mask(self, image: Tensor, labels: Tensor | None) -> Tensor:
        """The mask of every sample from a replayed CUDA graph (raises UnsupportedModel if the engine cannot)."""
        model = unwrap_model(self.model)
        noise = uniform_like(image[:, 0], self.generator)
        if labels is None:
            targets = torch.zeros(image.shape[0], dtype=torch.long, device=image.device)
        else:
            targets = labels.as_subclass(Tensor).to(image.device, non_blocking=True)
        alpha, beta, epsilon, predicted = self.alpha, self.beta, self.epsilon, labels is None

        def body(x: Tensor, static_targets: Tensor, static_noise: Tensor) -> tuple[Tensor, Tensor]:
            valid = []

            def grad_output_fn(logits: Tensor) -> Tensor:
                weights, ok = output_relevance_nosync(logits, None if predicted else static_targets)
                valid.append(ok)
                return weights

            with torch.enable_grad(), preserved_model_state(model, keep_values=False):
                model.eval()
                leaf = x.detach().requires_grad_(True)
                (rel,) = fast_relevance(model, (leaf,), lambda: model(leaf), grad_output_fn, epsilon)
            mask = relevance_dropout_mask(rel.sum(1), alpha, beta, noise=static_noise)
            status = torch.stack([valid[0], torch.isfinite(rel).all()])
            return mask, status

        key = (alpha, beta, epsilon, predicted)
        with torch.autocast("cuda", enabled=False):
            mask, status = self._graphs(model, key, (image, targets, noise), body)
        if not all(status.tolist()):  # one synchronisation per batch
            relevance(self.model, image, labels, composite=self.composite, epsilon=self.epsilon, backend="fast")
            raise ValueError(f"{type(self).__name__}: invalid labels or non-finite relevance in this batch.")
        return mask

    def make_params_for(self, image: Tensor, labels: Tensor | None) -> dict[str, Any]:
        """As the base class; with ``cuda_graphs`` on CUDA, the whole batch's mask comes from a replayed graph."""
        if self._uses_graphs(image):
            check_not_in_worker(type(self).__name__)
            image = image.as_subclass(Tensor)
            coins = sample_coins(image.shape[0], self.p, device=image.device, generator=self.generator)
            try:
                mask = self._graph_mask(image, labels)
            except UnsupportedModel:
                if self.backend == "fast":
                    raise
            else:
                return {"mask": mask & coins.view(-1, *([1] * (mask.ndim - 1)))}
        return super().make_params_for(image, labels)

    def mask_from_relevance(self, relevance: Tensor) -> Tensor:
        return relevance_dropout_mask(relevance, self.alpha, self.beta, generator=self.generator)
