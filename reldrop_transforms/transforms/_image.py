"""Shared machinery of the image transforms: inputs, labels, masks (through :class:`RelevanceSettings`), fill."""

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

from .._checks import check_finite_number, check_fits
from ..attribution import check_not_in_worker
from ..functional import fill_dropped
from ._common import RelevanceSettings


def _check_value(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return check_finite_number("value", float(value))  # (a NaN fill: the next batch would be refused as input)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    ):
        return tuple(check_finite_number("value (each channel's)", float(v)) for v in value)
    raise TypeError(f"value should be a number or a sequence of numbers (one per channel), but got {value!r}.")


def _received(flat_inputs: list[Any]) -> str:
    """What a call without an image batch got instead (for its error message)."""
    kinds = ", ".join(dict.fromkeys(type(inpt).__name__ for inpt in flat_inputs))
    if any(cls.__module__.startswith("torch_geometric.") for inpt in flat_inputs for cls in type(inpt).__mro__):
        return f" (got {kinds}: for point clouds use RelevanceDropout3d or RelevanceErasing3d)"
    return f" (got {kinds}; the images are a tv_tensors.Image or the first plain tensor)"


class RelevanceImageTransform(RelevanceSettings, Transform):
    """Base of the image transforms: ``t(images, labels)`` on float batches ``(B, C, H, W)``; subclasses draw the
    random numbers of their masks (:meth:`draw`) and build the masks of some samples from their channel-summed
    relevance (:meth:`mask_rows`, a pure tensor function)."""

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
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        self._set_up(model, p=p, composite=composite, epsilon=epsilon, backend=backend, labels_getter=labels_getter,
                     generator=generator, dtype=dtype, cuda_graphs=cuda_graphs)
        self.value = _check_value(value)

    def extra_repr(self) -> str:
        return self.settings_repr()  # (torchvision's writes strings unquoted: labels_getter=default)

    def forward(self, *inputs: Any) -> Any:
        check_not_in_worker(type(self).__name__)  # first: in a worker, a per-sample call is no batch either
        if not inputs:
            raise TypeError(f"{type(self).__name__} expects a batch of images (and labels), but got no input.")
        sample = inputs if len(inputs) > 1 else inputs[0]
        flat_inputs, spec = tree_flatten(sample)
        needs_transform = self._needs_transform_list(flat_inputs)
        params = self._params(sample, flat_inputs, needs_transform)
        if params["mask"] is None:
            return sample
        flat_outputs = [
            self.transform(inpt, params) if needs else inpt for inpt, needs in zip(flat_inputs, needs_transform)
        ]
        return tree_unflatten(flat_outputs, spec)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """torchvision's two-step API: ``params = t.make_params([images, labels])``, then ``t.transform(inpt, params)``
        for the images (and anything else to mask the same way). ``flat_inputs`` is read as the sample
        ``(images, labels)`` of a call ``t(images, labels)``: the image batch and the labels that ``labels_getter``
        finds there, so the list must hold the labels (torchvision's base ``forward`` would pass the images alone;
        this transform's ``forward`` does not go that way). ``params["mask"]`` is ``None`` where no sample is masked,
        and :meth:`transform` then returns its input itself.

        Example:
            >>> from reldrop_transforms import RelevanceDropout2d
            >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            ...                             torch.nn.Flatten(), torch.nn.Linear(4, 10))
            >>> t = RelevanceDropout2d(model, p=1.0)
            >>> images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
            >>> params = t.make_params([images, labels])
            >>> params["mask"].shape  # (B, H, W), True = dropped
            torch.Size([8, 16, 16])
            >>> t.transform(images, params).shape
            torch.Size([8, 3, 16, 16])
        """
        check_not_in_worker(type(self).__name__)
        if isinstance(flat_inputs, tuple):
            flat_inputs = list(flat_inputs)
        if not isinstance(flat_inputs, list) or not flat_inputs:
            raise TypeError(f"{type(self).__name__}.make_params expects a non-empty list of inputs (the images and "
                            f"their labels), but got {flat_inputs!r:.80}.")
        sample = tuple(flat_inputs) if len(flat_inputs) > 1 else flat_inputs[0]
        return self._params(sample, flat_inputs, self._needs_transform_list(flat_inputs))

    def _params(self, sample: Any, flat_inputs: list[Any], needs_transform: list[bool]) -> dict[str, Any]:
        """Check the call, then the mask of the batch among ``flat_inputs`` and the fill value (``mask`` ``None``:
        nothing masked); the settings as they are when it starts (:meth:`for_this_call`)."""
        return self.for_this_call()._params_now(sample, flat_inputs, needs_transform)

    def _params_now(self, sample: Any, flat_inputs: list[Any], needs_transform: list[bool]) -> dict[str, Any]:
        self.check_settings()  # (as set now: before any coin)
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
        images = [inpt for inpt, needs in zip(flat_inputs, needs_transform) if needs]
        if len(images) != 1:
            raise ValueError(f"{name} expects exactly one image batch per call, but found {len(images)}"
                             f"{_received(flat_inputs) if not images else ''}.")
        image = images[0]
        value = self._check_image(image, others=any(isinstance(inpt, Tensor) and inpt is not image and inpt.ndim == 4
                                                    for inpt in flat_inputs))
        labels = self._attributor.check_batch(image.as_subclass(Tensor), self._labels_from(sample), caller=name,
                                              what="images")
        if image.shape[0] == 0:
            return {"mask": None, "value": value}
        params = self.make_params_for(image, labels)
        params["value"] = value
        return params

    def _check_image(self, image: Tensor, others: bool = False) -> float | tuple[float, ...]:
        """Check the batch and the fill value for it; returns the value (as set: also one set after construction).
        ``others``: the sample holds another tensor shaped like an image batch (B, C, H, W), taken for something else."""
        name = type(self).__name__
        if image.ndim != 4:
            hint = ("Use it after the DataLoader, in a collate function, or wrap the loader with RelevanceLoader.")
            if image.ndim == 3:  # one image (C, H, W), or B single-channel images (B, H, W)
                hint = ("A single image (C, H, W) has no batch dimension (the attribution runs on batches): "
                        "add one with image[None]; B single-channel images (B, H, W) need their channel "
                        "dimension: images[:, None]. Or " + hint[0].lower() + hint[1:])
            elif others and not isinstance(image, tv_tensors.Image):  # e.g. {"index": ..., "image": ...}
                hint = ("The images are the first plain tensor of the sample (torchvision's rule): put them first, "
                        "or wrap them as tv_tensors.Image. " + hint)
            raise ValueError(
                f"{name} expects a batch of shape (B, C, H, W), but got {tuple(image.shape)} instead. {hint}"
            )
        value = _check_value(self.value)
        if isinstance(value, tuple) and len(value) not in (1, image.shape[1]):
            raise ValueError(
                f"{name}: value has {len(value)} entries but the images have {image.shape[1]} channels."
            )
        for each in value if isinstance(value, tuple) else (value,):
            check_fits(f"{name}: value", each, image.dtype)
        return value

    def draw(self, batch_size: int, image: Tensor) -> tuple[Tensor, ...]:
        """The random tensors of the masks of the whole batch ``image`` (one row per sample), from ``generator``."""
        raise NotImplementedError

    def mask_rows(self, relevance: Tensor, *draws: Tensor) -> Tensor:
        """The pixel masks ``(B', H, W)`` of some samples from their relevance ``(B', H, W)`` and their rows of
        :meth:`draw`; a pure tensor function (captured in CUDA graphs)."""
        raise NotImplementedError

    def mask_key(self) -> tuple:
        """The settings :meth:`mask_rows` depends on (a captured graph is reused only for the same key)."""
        raise NotImplementedError

    def make_params_for(self, image: Tensor, labels: Tensor | None) -> dict[str, Any]:
        """Coins, draws, relevance and the pixel mask ``(B, H, W)`` of the batch (``None``: nothing masked)."""
        image = image.as_subclass(Tensor)
        mask = self.masks(image, labels, lambda rel: rel.sum(1), lambda b: self.draw(b, image), self.mask_rows,
                          key=self.mask_key())
        return {"mask": mask}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if "mask" not in params or "value" not in params:
            raise ValueError(f"{type(self).__name__}.transform expects the params of make_params (a 'mask' and a "
                             f"'value'), but got the keys {sorted(params)}.")
        if params["mask"] is None:  # nothing masked
            return inpt
        out = fill_dropped(inpt.as_subclass(Tensor), params["mask"], params["value"])
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
