"""Loader hooks: run a relevance transform on whole batches, in the main process, on the model's device."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate, get_worker_info

from ._containers import map_tensors
from .attribution import model_device, unwrap_model

__all__ = ["RelevanceCollate", "RelevanceLoader", "move_to_device", "collate"]


def _find_model(transform: Any) -> nn.Module | None:
    model = getattr(transform, "model", None)
    if isinstance(model, nn.Module):
        return model
    for child in getattr(transform, "transforms", None) or ():
        model = _find_model(child)
        if model is not None:
            return model
    return None


def move_to_device(batch: Any, device: torch.device | None) -> Any:
    """Move every tensor in a (nested) batch to ``device``; containers keep their type."""
    if device is None:
        return batch
    # to the host a copy must be waited for (a non-blocking one returns before a CUDA tensor's values have arrived)
    non_blocking = torch.device(device).type != "cpu"
    return map_tensors(batch, lambda tensor: tensor.to(device, non_blocking=non_blocking),
                       lambda other: _moved(other, device, non_blocking))


def _moved(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    """``obj.to(device)`` for an object with a ``to`` of its own (e.g. PyG Data/Batch), on a shallow copy: PyG's
    ``to`` works in place, and the caller's object (a dataset's Data yielded as it is, a pre-built Batch) keeps its
    tensors where they were, as a tensor does."""
    if not callable(getattr(obj, "to", None)) or isinstance(obj, nn.Module):
        return obj
    try:
        obj = copy.copy(obj)
    except (TypeError, copy.Error):  # (an object that cannot be copied: moved as it is)
        pass
    try:
        return obj.to(device, non_blocking=non_blocking)
    except TypeError as error:  # a class of the user's whose to() takes the device alone
        if "non_blocking" not in str(error):
            raise
        return obj.to(device)


def collate(samples: list) -> Any:
    """``default_collate``, except that PyTorch Geometric ``Data`` samples become one ``Batch``."""
    if samples and "torch_geometric" in sys.modules:
        from torch_geometric.data import Batch
        from torch_geometric.data.data import BaseData

        if isinstance(samples[0], BaseData):
            return Batch.from_data_list(samples)
    return default_collate(samples)


class _DeviceResolver:
    def __init__(self, transform: Any, device: torch.device | str | None, owner: str) -> None:
        if not callable(transform):
            raise TypeError(f"{owner} expects a callable transform, but got {type(transform).__name__}.")
        self.transform = transform
        self.device = None if device is None else torch.device(device)
        if self.device is None and _find_model(transform) is None:
            raise ValueError(
                f"{owner} could not find the model in {type(transform).__name__}; pass device= explicitly."
            )

    def target_device(self) -> torch.device | None:
        # Resolved per batch: the model may be moved after the loader was built.
        if self.device is not None:
            return self.device
        return model_device(unwrap_model(_find_model(self.transform)))


class RelevanceCollate(_DeviceResolver):
    """A DataLoader ``collate_fn`` that collates, moves the batch to the model's device and applies ``transform``.

    Only for ``num_workers=0``: a collate function runs in the worker processes otherwise, where the model is a
    stale copy and CUDA is unavailable; there it raises and names :class:`RelevanceLoader`.

    Args:
        transform: A batch transform (e.g. ``RelevanceDropout2d`` or a ``v2.Compose`` holding one).
        collate_fn: The collation to run first; by default ``torch.utils.data.default_collate``, or
            ``Batch.from_data_list`` for PyTorch Geometric ``Data`` samples. Note that
            ``torch_geometric.loader.DataLoader`` ignores any ``collate_fn``: pass ``RelevanceCollate`` to a plain
            ``torch.utils.data.DataLoader`` over the PyG dataset, or wrap the PyG loader with
            :class:`RelevanceLoader`.
        device: Where the batch goes before the transform; the transform's model's device by default.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from reldrop_transforms import RelevanceDropout2d
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten(), torch.nn.Linear(8, 10))
        >>> dataset = TensorDataset(torch.randn(100, 3, 16, 16), torch.randint(0, 10, (100,)))
        >>> loader = DataLoader(dataset, batch_size=64, collate_fn=RelevanceCollate(RelevanceDropout2d(model)))
        >>> images, labels = next(iter(loader))
        >>> images.shape
        torch.Size([64, 3, 16, 16])
    """

    def __init__(self, transform: Callable, collate_fn: Callable | None = None, device=None) -> None:
        super().__init__(transform, device, "RelevanceCollate")
        self.collate_fn = collate if collate_fn is None else collate_fn

    def __call__(self, samples: list) -> Any:
        if get_worker_info() is not None:
            raise RuntimeError(
                "RelevanceCollate was called inside a DataLoader worker process (num_workers > 0), where the model "
                "is a stale copy and CUDA is unavailable. Use num_workers=0, or keep the workers and wrap the "
                "loader instead: RelevanceLoader(DataLoader(..., num_workers=N), transform)."
            )
        batch = move_to_device(self.collate_fn(samples), self.target_device())
        return self.transform(batch)


class _Transformed:
    """The iterator of a :class:`RelevanceLoader`: each batch of ``batches`` moved and transformed. Not a generator,
    so that it stays usable after a batch raised (a loop that skips a bad batch goes on with the next, as with the
    wrapped DataLoader's own iterator)."""

    __slots__ = ("batches", "owner")

    def __init__(self, batches: Iterator[Any], owner: RelevanceLoader) -> None:
        self.batches, self.owner = batches, owner

    def __iter__(self) -> _Transformed:
        return self

    def __next__(self) -> Any:
        batch = next(self.batches)
        return self.owner.transform(move_to_device(batch, self.owner.target_device()))


class RelevanceLoader(_DeviceResolver):
    """Wrap a DataLoader: each batch is moved to the model's device and transformed in the main process.

    Workers are allowed (they only load and collate). Works with ``torch.utils.data.DataLoader`` and any other
    iterable of batches. ``len()`` is the wrapped loader's; :meth:`set_epoch` reaches a ``DistributedSampler``
    and a batch sampler's ``set_epoch``; other attributes (``dataset``, ``batch_size``, ...) are the wrapped loader's.

    Args:
        loader: The DataLoader (or any iterable of batches).
        transform: A batch transform (e.g. ``RelevanceDropout2d`` or a ``v2.Compose`` holding one).
        device: Where batches go; the transform's model's device by default (looked up per batch).

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from reldrop_transforms import RelevanceDropout2d
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten(), torch.nn.Linear(8, 10))
        >>> train_set = TensorDataset(torch.randn(100, 3, 16, 16), torch.randint(0, 10, (100,)))
        >>> train_loader = RelevanceLoader(DataLoader(train_set, batch_size=32, shuffle=True),  # workers allowed
        ...                                RelevanceDropout2d(model))
        >>> for images, labels in train_loader:
        ...     loss = torch.nn.functional.cross_entropy(model(images), labels)
    """

    def __init__(self, loader, transform: Callable, device=None) -> None:
        super().__init__(transform, device, "RelevanceLoader")
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return _Transformed(iter(self.loader), self)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the loader and its (batch) sampler, e.g. a ``DistributedSampler``.

        Each distinct object among the loader, its ``sampler``, its ``batch_sampler`` (distributed bucketing
        samplers) and the batch sampler's ``sampler`` that has a ``set_epoch`` gets it once.
        """
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        called: list[Any] = []
        for owner in (self.loader, getattr(self.loader, "sampler", None), batch_sampler,
                      getattr(batch_sampler, "sampler", None)):
            if owner is None or any(owner is seen for seen in called):
                continue
            if callable(getattr(owner, "set_epoch", None)):
                owner.set_epoch(epoch)
                called.append(owner)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "transform", "device") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.loader, name)
