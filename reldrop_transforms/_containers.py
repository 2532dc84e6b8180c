"""Nested containers of tensors (a bottom module: imported by ``attribution`` and the loaders, importing neither)."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["map_tensors", "rebuilt"]


def rebuilt(container: Any, items: list) -> Any:
    """A list, tuple or namedtuple of ``container``'s own type holding ``items``."""
    if hasattr(type(container), "_make"):  # a namedtuple: its fields are separate arguments of its constructor
        return type(container)._make(items)
    return type(container)(items)


def map_tensors(value: Any, fn: Callable[[Tensor], Any], other: Callable[[Any], Any] | None = None) -> Any:
    """``value`` with ``fn`` applied to every tensor in it, through mappings, lists and tuples (namedtuples), which
    keep their type; ``other(obj)`` for any other object (default: the object itself)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        mapped = {key: map_tensors(item, fn, other) for key, item in value.items()}
        if isinstance(value, defaultdict):  # (its constructor takes the default factory first)
            return type(value)(value.default_factory, mapped)
        try:
            return type(value)(mapped)
        except TypeError:  # a constructor of its own: a copy updated with the mapped values, as default_collate
            clone = copy.copy(value)
            clone.update(mapped)
            return clone
    if isinstance(value, (list, tuple)):
        return rebuilt(value, [map_tensors(item, fn, other) for item in value])
    return value if other is None else other(value)
