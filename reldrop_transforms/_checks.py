"""Argument checks shared by every public entry point (internal): one checker per kind of argument."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

BACKENDS = ("auto", "fast", "zennit")


def check_unit_interval(name: str, value: object) -> float:
    """Return ``value`` as a float after checking that it lies in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` should be a real number in the interval [0.0, 1.0], but got {type(value).__name__}.")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"`{name}` should be in the interval [0.0, 1.0], but got {value} instead.")
    return value


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model should be a torch.nn.Module, but got {type(model).__name__}.")
    return model


def check_backend(backend: Any) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend should be one of {BACKENDS}, but got {backend!r} instead.")
    return backend


def check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"epsilon should be a number >= 0, but got {type(epsilon).__name__} {epsilon!r}.")
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon should be a number >= 0 (and finite), but got {epsilon!r} instead.")
    return float(epsilon)


def check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator should be a torch.Generator or None, but got {type(generator).__name__}.")
    return generator


AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def check_dtype(dtype: Any) -> torch.dtype | None:
    """An autocast precision: ``torch.bfloat16``, ``torch.float16`` or ``None`` (autocast off). Others are refused:
    autocast would warn and run in the model's own precision instead."""
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype should be a torch.dtype or None, but got {type(dtype).__name__}.")
    if dtype is not None and dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"dtype should be one of autocast's precisions, torch.bfloat16 or torch.float16 (or None: "
                         f"the model's own precision), but got {dtype}.")
    return dtype


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be a bool, but got {type(value).__name__}.")
    return value


def check_keys(keys: Any) -> tuple[str, ...]:
    """A non-empty sequence of attribute names (a string alone is refused: ``keys="pos"`` would be its letters)."""
    if isinstance(keys, str) or not isinstance(keys, Sequence) or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"keys should be a sequence of attribute names such as ('pos', 'x'), but got {keys!r}.")
    if not keys:
        raise ValueError("keys should name at least one attribute (e.g. ('pos', 'x')), but got none.")
    return tuple(keys)


def as_integer(value: Any) -> int | None:
    """``value`` as an ``int`` if it is an integer (``int``, ``numpy.int64``, a 0-d integer tensor: anything with
    ``__index__``; not ``bool``), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (``int``, or an integral scalar such as ``numpy.int64`` or a 0-d integer tensor;
    ``bool`` is not accepted), as an ``int``."""
    number = as_integer(value)
    if number is None:
        raise TypeError(f"{name} should be an integer >= {minimum}, but got {type(value).__name__} {value!r}.")
    if number < minimum:
        raise ValueError(f"{name} should be an integer >= {minimum}, but got {value!r} instead.")
    return number


def check_tensor(name: str, value: Any, shape: str | None = None, ndim: int | tuple[int, ...] | None = None) -> Tensor:
    """``value`` if it is a tensor (of ``ndim`` dimensions, one of them when a tuple); ``shape`` says the expected
    shape in the messages, e.g. ``"(B, H, W)"``."""
    expected = f" of shape {shape}" if shape else ""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} should be a torch.Tensor{expected}, but got {type(value).__name__}.")
    if ndim is not None and value.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} should have shape {shape or f'of {ndim} dimensions'}, but got "
                         f"{tuple(value.shape)} instead.")
    return value


def check_bool_mask(name: str, value: Any) -> Tensor:
    """``value`` if it is a bool tensor (a mask: uint8 is refused, ``~`` is not ``not`` on it)."""
    if not isinstance(value, Tensor) or value.dtype != torch.bool:
        raise TypeError(f"{name} should be a bool tensor, but got {getattr(value, 'dtype', type(value).__name__)}.")
    return value


def check_count(name: str, value: Any) -> int:
    """An integer >= 0 (a batch size, a height), as :func:`check_positive_int` takes integers."""
    return check_positive_int(name, value, minimum=0)


def check_segments(batch: Any, num_segments: Any) -> tuple[Tensor, int]:
    """A PyG-style ``batch`` vector (a 1-d integer tensor, returned as int64) and its ``num_segments`` (an integer
    >= 0, required with it); on the CPU, where it costs no synchronisation, also that every entry is in
    ``[0, num_segments)``."""
    if num_segments is None:
        raise ValueError("num_segments is required with batch (e.g. Batch.num_graphs).")
    num_segments = check_count("num_segments", num_segments)
    if not isinstance(batch, Tensor) or batch.ndim != 1 or batch.is_floating_point() or batch.is_complex() \
            or batch.dtype == torch.bool:
        got = f"a {batch.ndim}-d {batch.dtype}" if isinstance(batch, Tensor) else type(batch).__name__
        raise TypeError(f"batch should be a 1-d integer tensor (a cloud index per point), but got {got}.")
    batch = batch.long()
    if batch.device.type == "cpu" and batch.numel() and not (0 <= int(batch.min()) and int(batch.max()) < num_segments):
        raise ValueError(f"batch should hold cloud indices in [0, {num_segments}) (num_segments={num_segments}), but "
                         f"holds {int(batch.min())}..{int(batch.max())}.")
    return batch, num_segments


def check_finite_number(name: str, value: float) -> float:
    """``value`` (already a real number) unless it is NaN or infinite."""
    if not math.isfinite(value):
        raise ValueError(f"{name} should be a finite number, but got {value!r} instead.")
    return value


def check_fits(name: str, value: float, dtype: torch.dtype) -> None:
    """A finite fill ``value`` stays finite written into a floating tensor of ``dtype`` (1e5 is inf in float16,
    and the next batch would then be refused as input)."""
    if dtype.is_floating_point and not math.isfinite(float(torch.tensor(value, dtype=dtype))):
        raise ValueError(f"{name} {value!r} is not finite in {dtype} (its largest finite value is "
                         f"{torch.finfo(dtype).max:g}): use a smaller value or a wider dtype.")


def check_range(name: str, value: Sequence[float], low: float, high: float | None = None) -> tuple[float, float]:
    """An increasing pair ``(min, max)`` with ``low <= min`` (and ``max <= high``)."""
    if (isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"`{name}` should be a sequence (min, max), but got {value!r}.")
    a, b = float(value[0]), float(value[1])
    if math.isinf(a) or math.isinf(b):  # (NaN fails the order below)
        raise ValueError(f"`{name}` should be a pair of finite numbers, but got {tuple(value)} instead.")
    if not (low <= a <= b) or (high is not None and b > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` should be an increasing pair in {bound}, but got {tuple(value)} instead.")
    return a, b


# torch's unsigned integers wider than uint8 (torch >= 2.3)
_WIDE_UNSIGNED = tuple(dtype for name in ("uint16", "uint32", "uint64") if (dtype := getattr(torch, name, None)))


def check_labels(labels: Any, batch_size: int, what: str = "samples") -> Tensor | None:
    """Labels of a whole batch: ``None``, class indices ``(B,)`` of an integer dtype, or soft labels ``(B, K)``.

    Returns them as a plain tensor (soft labels as floating point; uint16/32/64 class indices as int64). The class
    range needs the model's number of outputs and is checked where that is known.
    """
    if labels is None:
        return None
    if not isinstance(labels, Tensor):
        raise TypeError(f"the labels should be a torch.Tensor, but got {type(labels).__name__}.")
    labels = labels.as_subclass(Tensor)
    if labels.is_meta:
        raise ValueError("the labels are on the meta device, which holds no values: give them on the images' device "
                         "(or on the CPU).")
    if labels.ndim not in (1, 2) or labels.shape[0] != batch_size:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match a batch of {batch_size} {what}: expected "
            f"class indices ({batch_size},) or soft labels ({batch_size}, K)."
        )
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(
                f"labels of shape (B,) should be integer class indices, but got dtype {labels.dtype}. "
                "Soft labels have shape (B, K)."
            )
        if labels.dtype in _WIDE_UNSIGNED:  # (torch has few kernels for them: not even `<` on the CPU)
            return labels.to(torch.int64)
        return labels
    if labels.is_complex():
        raise TypeError(f"soft labels should be real, but got dtype {labels.dtype}.")
    return labels if labels.is_floating_point() else labels.float()


def check_homogeneous(caller: str, data: Any) -> None:
    """Refuse a torch_geometric ``HeteroData`` (or a batch of them): several node and edge types, not one cloud's
    points (by class name: the core does not import torch_geometric)."""
    if any(cls.__name__ == "HeteroData" and cls.__module__.startswith("torch_geometric.")
           for cls in type(data).__mro__):
        raise TypeError(f"{caller} expects homogeneous point clouds (a torch_geometric Data or Batch), but got a "
                        f"{type(data).__name__}: attribute one node type as a Data of its own (e.g. "
                        "hetero.to_homogeneous()).")
