"""RelevanceDropout2d: the RelDrop pixel mask as a torchvision ``transforms.v2`` batch transform."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2._utils import is_pure_tensor

from .._checks import check_unit_interval
from ..attribution import BACKENDS, relevance
from ..attribution._api import check_finite, check_inputs, check_not_in_worker, output_relevance_nosync
from ..attribution._fast import FAST_COMPOSITES, UnsupportedModel, fast_relevance
from ..attribution._graphs import GraphCache
from ..attribution._state import preserved_model_state, unwrap_model
from ..functional import fill_dropped, relevance_dropout_mask, sample_coins, uniform_like
from ._labels import parse_labels_getter

__all__ = ["RelevanceDropout2d"]


def _check_value(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    ):
        return tuple(float(v) for v in value)
    raise TypeError(f"value should be a number or a sequence of numbers (one per channel), but got {value!r}.")


class RelevanceDropout2d(Transform):
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
        cuda_graphs: On CUDA, with the fast engine, capture the whole attribution and mask in a CUDA graph per
            input shape and replay it (see :mod:`reldrop_transforms.attribution._graphs`). Every sample is then
            attributed (fixed shapes), the coin only decides which masks are applied, and one synchronisation per
            batch checks labels and finiteness. Keeps one graph's memory per shape (up to 4). CPU stays eager.

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

    _transformed_types = (tv_tensors.Image, is_pure_tensor)

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
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model should be a torch.nn.Module, but got {type(model).__name__}.")
        if backend not in BACKENDS:
            raise ValueError(f"backend should be one of {BACKENDS}, but got {backend!r} instead.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator should be a torch.Generator or None, but got {type(generator).__name__}.")
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon >= 0:
            raise ValueError(f"epsilon should be a number >= 0, but got {epsilon!r} instead.")
        self._model = (model,)  # a tuple: not registered as a submodule
        self.alpha = check_unit_interval("alpha", alpha)
        self.beta = check_unit_interval("beta", beta)
        self.p = check_unit_interval("p", p)
        self.value = _check_value(value)
        self.composite = composite
        self.epsilon = float(epsilon)
        self.backend = backend
        self.labels_getter = labels_getter
        self._labels_getter = parse_labels_getter(labels_getter)
        self.generator = generator
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

    @property
    def model(self) -> nn.Module:
        """The model whose relevance drives the mask (held by reference)."""
        return self._model[0]

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        flat_inputs, spec = tree_flatten(sample)
        name = type(self).__name__
        if any(isinstance(inpt, PIL.Image.Image) for inpt in flat_inputs):
            raise TypeError(
                f"{name} works on batched tensors, but got a PIL image. Use it after the DataLoader (or in a "
                "collate function) on a float batch, e.g. after v2.ToImage() and v2.ToDtype(torch.float32, scale=True)."
            )
        needs_transform = self._needs_transform_list(flat_inputs)
        images = [inpt for inpt, needs in zip(flat_inputs, needs_transform) if needs]
        if len(images) != 1:
            raise ValueError(f"{name} expects exactly one image batch per call, but found {len(images)}.")
        image = images[0]
        self._check_image(image)
        labels = None
        if self._labels_getter is not None:
            labels = self._labels_getter(sample)
            self._check_labels(labels, image.shape[0])
        if image.shape[0] == 0:
            return sample
        params = self.make_params_for(image, labels)
        if params["mask"] is None:
            return sample
        flat_outputs = [
            self.transform(inpt, params) if needs else inpt for inpt, needs in zip(flat_inputs, needs_transform)
        ]
        return tree_unflatten(flat_outputs, spec)

    def _check_image(self, image: Tensor) -> None:
        name = type(self).__name__
        if image.ndim != 4:
            raise ValueError(
                f"{name} expects a batch of shape (B, C, H, W), but got {tuple(image.shape)} instead. Use it after "
                "the DataLoader, in a collate function, or wrap the loader with RelevanceLoader."
            )
        check_inputs(unwrap_model(self.model), image, caller=name)
        if isinstance(self.value, tuple) and len(self.value) not in (1, image.shape[1]):
            raise ValueError(
                f"{name}: value has {len(self.value)} entries but the images have {image.shape[1]} channels."
            )

    def _check_labels(self, labels: Any, batch_size: int) -> None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"the labels should be a torch.Tensor, but got {type(labels).__name__}.")
        if labels.ndim not in (1, 2) or labels.shape[0] != batch_size:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match a batch of {batch_size} images: expected "
                f"class indices ({batch_size},) or soft labels ({batch_size}, K)."
            )

    def _uses_graphs(self, image: Tensor) -> bool:
        return (
            self.cuda_graphs and image.is_cuda and self.backend in ("auto", "fast")
            and isinstance(self.composite, str) and self.composite in FAST_COMPOSITES
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
        """Draw the coins, attribute the selected samples and build the pixel mask ``(B, H, W)`` (or ``None``)."""
        check_not_in_worker(type(self).__name__)
        image = image.as_subclass(Tensor)
        batch_size = image.shape[0]
        coins = sample_coins(batch_size, self.p, device=image.device, generator=self.generator)
        if self._uses_graphs(image):
            try:
                mask = self._graph_mask(image, labels)
            except UnsupportedModel:
                if self.backend == "fast":
                    raise
            else:
                return {"mask": mask & coins.view(-1, *([1] * (mask.ndim - 1)))}
        if self.p >= 1.0:
            index = None
            selected = image
        else:
            index = coins.nonzero().flatten()  # one synchronisation: only the selected samples are attributed
            if index.numel() == 0:
                return {"mask": None}
            selected = image.index_select(0, index)
        targets = None
        if labels is not None:
            targets = labels.as_subclass(Tensor).to(image.device, non_blocking=True)
            if index is not None:
                targets = targets.index_select(0, index)
        rel = relevance(
            self.model, selected, targets, composite=self.composite, epsilon=self.epsilon, backend=self.backend,
            check_finite_values=False,  # checked below, so that the error names batch indices, not subset ones
        )
        check_finite(rel, type(self).__name__, index)
        sub_mask = relevance_dropout_mask(rel.sum(1), self.alpha, self.beta, generator=self.generator)
        if index is None:
            mask = sub_mask
        else:
            mask = torch.zeros((batch_size, *sub_mask.shape[1:]), dtype=torch.bool, device=image.device)
            mask.index_copy_(0, index, sub_mask)
        return {"mask": mask}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = fill_dropped(inpt.as_subclass(Tensor), params["mask"], self.value)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
