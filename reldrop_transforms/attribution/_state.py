"""Model-state safety: attribution must leave the training state exactly as it found it.

Attribution puts the model in eval mode, and the zennit backend registers hooks and canonizers that swap
parameters while they are registered (zennit 1.0.0 even replaces ``nn.Parameter`` objects and adds keys to the
``state_dict``). :class:`preserved_model_state` records the whole module tree before and puts every piece back
afterwards, also when an exception is raised half-way.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = ["preserved_model_state", "unwrap_model", "model_device", "set_eval"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that holds the parameters behind DDP, DataParallel and ``torch.compile`` wrappers.

    Forwarding through ``DistributedDataParallel`` outside a training step prepares a gradient reduction that
    never comes, and hooks added to a compiled module force a recompilation, so attribution always runs on the
    plain module underneath (which shares the parameters).
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def model_device(model: nn.Module) -> torch.device | None:
    """Device of the model's first parameter (or buffer); ``None`` for a model without tensors."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def set_eval(model: nn.Module, modules: Sequence[nn.Module]) -> None:
    """``model.eval()``; when no module in ``modules`` (``model.modules()``) overrides ``train`` or
    ``__setattr__``, by setting the flags directly (what ``nn.Module.train`` does, without its per-module
    ``__setattr__``)."""
    train, setattr_ = nn.Module.train, nn.Module.__setattr__
    if all(type(module).train is train and type(module).__setattr__ is setattr_ for module in modules):
        for module in modules:
            module.__dict__["training"] = False
    else:
        model.eval()


class _ModuleRecord:
    """A shallow record of one module: its attribute dict and the contents of every dict/set held in it.

    Most containers (the hook dicts) are empty and stay so: recorded without a copy. Restoring compares by identity
    with C-level loops first and touches only what changed.
    """

    __slots__ = ("module", "attributes", "containers", "empty")

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.attributes = attributes = module.__dict__.copy()
        # _parameters, _buffers, _modules, every hook dict, _non_persistent_buffers_set, ...
        self.containers: list = []  # (container, copy of its contents)
        self.empty: list = []  # containers that were empty
        for value in attributes.values():
            if isinstance(value, (dict, set)):
                if value:
                    self.containers.append((value, value.copy()))
                else:
                    self.empty.append(value)

    def restore(self) -> None:
        current = self.module.__dict__
        attributes = self.attributes
        if current.keys() != attributes.keys() or not all(map(operator.is_, current.values(), attributes.values())):
            for key in [key for key in current if key not in attributes]:
                del current[key]  # e.g. a weight that zennit 1.0.0 left in the instance dict
            for key, value in attributes.items():
                if current.get(key, _MISSING) is not value:
                    current[key] = value
        for value in self.empty:
            if value:
                value.clear()
        for value, saved in self.containers:
            if not _same_contents(value, saved):
                value.clear()
                value.update(saved)


_MISSING = object()


def _same_contents(current: dict | set, saved: dict | set) -> bool:
    # By identity, in order: `==` on tensors is elementwise.
    if isinstance(saved, set):
        return current == saved
    return len(current) == len(saved) and all(map(operator.eq, current, saved)) \
        and all(map(operator.is_, current.values(), saved.values()))


class _TensorRecord:
    """Identity, storage, autograd flags, ``.grad`` and (optionally) the values of a parameter or buffer."""

    __slots__ = ("tensor", "data", "data_ptr", "requires_grad", "grad", "hooks", "values")

    def __init__(self, tensor: torch.Tensor, keep_values: bool) -> None:
        self.tensor = tensor
        self.data = tensor.data  # aliases the storage: lets us undo a `.data = ...` swap
        self.data_ptr = tensor.data_ptr()
        self.requires_grad = tensor.requires_grad
        self.grad = tensor.grad
        hooks = tensor._backward_hooks
        self.hooks = None if hooks is None else dict(hooks)
        self.values = tensor.detach().clone() if keep_values else None

    def restore(self) -> None:
        tensor = self.tensor
        if tensor.data_ptr() != self.data_ptr or tensor.shape != self.data.shape:
            tensor.data = self.data
        if self.values is not None:
            self.restore_values(self.values)
        if tensor.requires_grad != self.requires_grad:
            tensor.requires_grad_(self.requires_grad)
        if tensor.grad is not self.grad:
            tensor.grad = self.grad
        hooks = tensor._backward_hooks
        if self.hooks is None:
            if hooks:
                hooks.clear()
        elif hooks is not None and dict(hooks) != self.hooks:
            hooks.clear()
            hooks.update(self.hooks)

    def restore_values(self, values: torch.Tensor) -> None:
        if not bitwise_equal(self.tensor, values):
            # In place on `.data`: the parameter's autograd version counter is not bumped.
            self.tensor.data.copy_(values)


_SAME_SIZE_INTEGERS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal`` on the bits of floating tensors: -0.0 differs from 0.0, and a NaN equals the same NaN."""
    if a.dtype == b.dtype and a.dtype.is_floating_point and a.shape == b.shape:
        integer = _SAME_SIZE_INTEGERS.get(a.element_size())
        if integer is not None and a.is_contiguous() and b.is_contiguous():
            return torch.equal(a.view(integer), b.view(integer))
    return torch.equal(a, b)


def _joined(tensors: list, ndim: int) -> torch.Tensor:
    return torch.stack(tensors) if ndim == 0 else torch.cat(tensors)


class _ValueSnapshot:
    """The values of many small tensors (a model's buffers: BatchNorm statistics, counters) in one copy per kind
    (device, dtype; 0-d or 1-d): one ``stack``/``cat`` to record them, one more and one ``equal`` to check them,
    instead of a clone and an ``equal`` each. The records of changed tensors put their values back."""

    __slots__ = ("groups",)

    def __init__(self, records: Sequence[_TensorRecord]) -> None:
        kinds: dict = {}
        for record in records:
            tensor = record.tensor
            kinds.setdefault((tensor.device, tensor.dtype, tensor.ndim), []).append(record)
        self.groups = [(group, ndim, _joined([record.data for record in group], ndim))
                       for (_, _, ndim), group in kinds.items()]  # (records, ndim, their values in one tensor)

    def restore(self) -> None:
        """(After every record's storage and shape are back: see :func:`preserved_model_state`.)"""
        for group, ndim, values in self.groups:
            if bitwise_equal(_joined([record.tensor for record in group], ndim), values):
                continue
            offset = 0
            for record in group:  # something changed: one by one
                size = record.data.numel()
                record.restore_values(values[offset:offset + size].view_as(record.data))
                offset += size


@contextlib.contextmanager
def preserved_model_state(model: nn.Module, *, keep_values: bool = True,
                          modules: Sequence[nn.Module] | None = None) -> Iterator[nn.Module]:
    """Context in which ``model`` may be changed freely: on exit everything is put back as it was.

    Restored, whether the block finishes or raises: the module tree, each module's own ``training`` flag and other
    attributes, the parameter and buffer objects (same ``nn.Parameter`` objects, so optimizers keep working), their
    storage, the buffers' values bit for bit (a forward may write to them: BatchNorm statistics, a call counter)
    and, with ``keep_values``, the parameters' values; ``requires_grad``, ``.grad`` and every module and tensor hook.

    Args:
        model: The module whose state is preserved.
        keep_values: Also snapshot and restore parameter values. Needed for backends that write into weights
            (zennit's canonizers); costs one copy of the parameters.
        modules: ``model.modules()``, when the caller has them.
    """
    modules = [_ModuleRecord(module) for module in (model.modules() if modules is None else modules)]
    # While a CUDA graph is being captured nothing runs (the graph's writes happen at each replay), and comparing
    # values would synchronise, which a capture refuses: values are then neither recorded nor compared.
    values_too = not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())
    seen: set[int] = set()
    tensors, batched = [], []
    for record in modules:
        for container, keep in (("_parameters", keep_values and values_too), ("_buffers", values_too)):
            for tensor in record.attributes.get(container, {}).values():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    small = keep and tensor.ndim <= 1 and tensor.layout == torch.strided \
                        and tensor.device.type != "meta" and not tensor.is_quantized
                    tensors.append(_TensorRecord(tensor, keep and not small))
                    if small:
                        batched.append(tensors[-1])
    values = _ValueSnapshot(batched)
    try:
        yield model
    finally:
        with torch.no_grad():
            for record in modules:
                record.restore()
            for tensor_record in tensors:
                tensor_record.restore()
            values.restore()
