"""Shared machinery of the image transforms: inputs, labels, coins, attribution of the selected samples, fill."""

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
from ..attribution._api import check_inputs, check_not_in_worker
from ..attribution._state import unwrap_model
from ..functional import fill_dropped
from ._common import attribute_selected, check_common, check_model, scatter_rows
from ._labels import parse_labels_getter


def _check_value(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    ):
        return tuple(float(v) for v in value)
    raise TypeError(f"value should be a number or a sequence of numbers (one per channel), but got {value!r}.")


class RelevanceImageTransform(Transform):
    """Base of the image transforms: ``t(images, labels)`` on float batches ``(B, C, H, W)``; subclasses build the
    mask from the channel-summed relevance of the selected samples (:meth:`mask_from_relevance`)."""

    _transformed_types = (tv_tensors.Image, is_pure_tensor)

    def __init__(
        self,
        model: nn.Module,
        *,
        p: float,
        value: float | Sequence[float],
        composite,
        epsilon: float,
        backend: str,
        labels_getter: str | Callable[[Any], Any] | None,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__()
        check_common(model, backend, generator, epsilon)
        self._model = (model,)  # a tuple: not registered as a submodule
        self.p = check_unit_interval("p", p)
        self.value = _check_value(value)
        self.composite = composite
        self.epsilon = float(epsilon)
        self.backend = backend
        self.labels_getter = labels_getter
        self._labels_getter = parse_labels_getter(labels_getter)
        self.generator = generator

    @property
    def model(self) -> nn.Module:
        """The model whose relevance drives the mask (held by reference).

        A pickled or deep-copied transform holds a copy of the model: ``t.model = model`` rebinds it.
        """
        return self._model[0]

    @model.setter
    def model(self, model: nn.Module) -> None:
        check_model(model)
        self._model = (model,)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "model":  # nn.Module.__setattr__ would register a module as a submodule, past the property
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        flat_inputs, spec = tree_flatten(sample)
        name = type(self).__name__
        if any(isinstance(inpt, PIL.Image.Image) for inpt in flat_inputs):
            raise TypeError(
                f"{name} works on batched tensors, but got a PIL image. Use it after the DataLoader (or in a "
                "collate function) on a float batch, e.g. after v2.ToImage() and v2.ToDtype(torch.float32, scale=True)."
            )
        if any(isinstance(inpt, tv_tensors.Video) for inpt in flat_inputs):
            raise TypeError(
                f"{name} expects a batch of images (B, C, H, W), but got a tv_tensors.Video: videos are not "
                "supported. Reshape the frames into a batch of images, video.flatten(0, 1) for (B, T, C, H, W) -> "
                "(B*T, C, H, W) with labels.repeat_interleave(T), and back with .unflatten(0, (B, T))."
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

    def mask_from_relevance(self, relevance: Tensor) -> Tensor:
        """The pixel mask ``(B', H, W)`` of the selected samples from their relevance ``(B', H, W)``."""
        raise NotImplementedError

    def make_params_for(self, image: Tensor, labels: Tensor | None) -> dict[str, Any]:
        """Draw the coins, attribute the selected samples and build the pixel mask ``(B, H, W)`` (or ``None``)."""
        check_not_in_worker(type(self).__name__)
        image = image.as_subclass(Tensor)
        rel, index = attribute_selected(self, image, labels, channel_dim=1)
        if rel is None:
            return {"mask": None}
        return {"mask": scatter_rows(self.mask_from_relevance(rel), index, image.shape[0])}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = fill_dropped(inpt.as_subclass(Tensor), params["mask"], self.value)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
