"""Finding the labels in a transform's input (internal)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def labels_key(mapping: Mapping) -> Any:
    """The key of the labels in a dict sample: ``"labels"`` (any case), else the first key containing ``"label"``;
    ``None`` if there is none."""
    keys = [key for key in mapping if isinstance(key, str)]
    for key in keys:
        if key.lower() == "labels":
            return key
    for key in keys:
        if "label" in key.lower():
            return key
    return None


def _labels_from_mapping(mapping: Mapping) -> Any:
    key = labels_key(mapping)
    if key is not None:
        return mapping[key]
    raise ValueError(
        f"could not find the labels in a dict with keys {list(mapping)}: name them 'labels', pass a "
        "labels_getter callable, or labels_getter=None to attribute the predicted class."
    )


def default_labels_getter(sample: Any) -> Any:
    """``(images, labels)`` -> labels; ``(images, {"labels": ...})`` or ``{"labels": ...}`` -> that entry."""
    if isinstance(sample, (tuple, list)) and len(sample) >= 2:
        second = sample[1]
        if isinstance(second, Mapping):
            return _labels_from_mapping(second)
        return second  # (a tensor; anything else is refused by the caller, saying what it got)
    if isinstance(sample, Mapping):
        return _labels_from_mapping(sample)
    raise ValueError(
        "could not find the labels: call the transform as t(images, labels), pass a labels_getter callable, or "
        "labels_getter=None to attribute the predicted class."
    )


def parse_labels_getter(labels_getter: str | Callable | None) -> Callable | None:
    if labels_getter == "default":
        return default_labels_getter
    if labels_getter is None or callable(labels_getter):
        return labels_getter
    raise ValueError(f"labels_getter should be 'default', a callable or None, but got {labels_getter!r} instead.")
