"""Nested containers of tensors (a bottom module: imported by ``attribution`` and the loaders, importing neither)."""

from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["copy_tensors", "map_tensors", "rebuilt"]


def rebuilt(container: Any, items: list) -> Any:
    """A list, tuple or namedtuple of ``container``'s own type holding ``items`` (a namedtuple through its
    constructor, one argument per field, so that a ``__new__`` of its own runs)."""
    if hasattr(type(container), "_fields"):
        return type(container)(*items)
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


_PLAIN = (list, tuple, dict, OrderedDict, defaultdict)


def copy_tensors(value: Any) -> Any:
    """``value`` with every tensor in it cloned, through plain lists, tuples, namedtuples and dicts (``dict``,
    ``OrderedDict``, ``defaultdict``), rebuilt only where they hold a tensor; ``value`` itself otherwise (a container
    of a class of its own is left as it is: its constructor may take anything)."""
    if isinstance(value, Tensor):
        return value.clone()
    kind = type(value)
    if kind not in _PLAIN and not (issubclass(kind, tuple) and kind.__bases__ == (tuple,) and hasattr(kind, "_fields")):
        return value
    if isinstance(value, dict):
        items = {key: copy_tensors(item) for key, item in value.items()}
        if all(items[key] is item for key, item in value.items()):
            return value
        if kind is defaultdict:
            return defaultdict(value.default_factory, items)
        return kind(items)
    items = [copy_tensors(item) for item in value]
    if all(new is old for new, old in zip(items, value)):
        return value
    return rebuilt(value, items)
