"""Model-state safety: attribution must leave the training state exactly as it found it.

Attribution puts the model in eval mode, and the zennit backend registers hooks and canonizers that swap
parameters while they are registered (zennit 1.0.0 even replaces ``nn.Parameter`` objects and adds keys to the
``state_dict``). :class:`preserved_model_state` records the whole module tree before and puts every piece back
afterwards, also when an exception is raised half-way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["preserved_model_state", "unwrap_model", "model_device"]


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


class _ModuleRecord:
    """A shallow record of one module: its attribute dict and the contents of every dict/set held in it."""

    __slots__ = ("module", "attributes", "containers")

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.attributes = dict(module.__dict__)
        # _parameters, _buffers, _modules, every hook dict, _non_persistent_buffers_set, ...
        # (most containers, the hook dicts, are empty: recorded as such without a copy)
        self.containers = {
            key: (value.copy() if value else _EMPTY)
            for key, value in self.attributes.items()
            if isinstance(value, (dict, set))
        }

    def restore(self) -> None:
        current = self.module.__dict__
        for key in [key for key in current if key not in self.attributes]:
            del current[key]  # e.g. a weight that zennit 1.0.0 left in the instance dict
        for key, value in self.attributes.items():
            if current.get(key, _MISSING) is not value:
                current[key] = value
            saved = self.containers.get(key)
            if saved is _EMPTY:
                if value:
                    value.clear()
            elif saved is not None and not _same_contents(value, saved):
                value.clear()
                value.update(saved)


_MISSING = object()
_EMPTY = object()  # an empty container


def _same_contents(current: dict | set, saved: dict | set) -> bool:
    # By identity: `==` on tensors is elementwise.
    if isinstance(saved, set):
        return current == saved
    return len(current) == len(saved) and all(
        a == b and current[a] is saved[b] for a, b in zip(current, saved)
    )


class _TensorRecord:
    """Identity, storage, autograd flags, ``.grad`` and (optionally) the values of a parameter or buffer."""

    __slots__ = ("tensor", "data", "data_ptr", "requires_grad", "grad", "hooks", "values")

    def __init__(self, tensor: torch.Tensor, keep_values: bool) -> None:
        self.tensor = tensor
        self.data = tensor.data  # aliases the storage: lets us undo a `.data = ...` swap
        self.data_ptr = tensor.data_ptr()
        self.requires_grad = tensor.requires_grad
        self.grad = tensor.grad
        self.hooks = None if tensor._backward_hooks is None else dict(tensor._backward_hooks)
        self.values = tensor.detach().clone() if keep_values else None

    def restore(self) -> None:
        tensor = self.tensor
        if tensor.data_ptr() != self.data_ptr or tensor.data.shape != self.data.shape:
            tensor.data = self.data
        if self.values is not None and not torch.equal(tensor.data, self.values):
            # In place on `.data`: the parameter's autograd version counter is not bumped.
            tensor.data.copy_(self.values)
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


@contextlib.contextmanager
def preserved_model_state(model: nn.Module, *, keep_values: bool = True) -> Iterator[nn.Module]:
    """Context in which ``model`` may be changed freely: on exit everything is put back as it was.

    Restored, whether the block finishes or raises: the module tree, each module's own ``training`` flag and other
    attributes, the parameter and buffer objects (same ``nn.Parameter`` objects, so optimizers keep working), their
    storage, the buffers' values bit for bit (a forward may write to them: BatchNorm statistics, a call counter)
    and, with ``keep_values``, the parameters' values; ``requires_grad``, ``.grad`` and every module and tensor hook.

    Args:
        model: The module whose state is preserved.
        keep_values: Also snapshot and restore parameter values. Needed for backends that write into weights
            (zennit's canonizers); costs one copy of the parameters.
    """
    modules = [_ModuleRecord(module) for module in model.modules()]
    seen: set[int] = set()
    tensors = []
    for record in modules:
        for container, keep in (("_parameters", keep_values), ("_buffers", True)):
            for tensor in record.attributes.get(container, {}).values():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    tensors.append(_TensorRecord(tensor, keep))
    try:
        yield model
    finally:
        with torch.no_grad():
            for record in modules:
                record.restore()
            for tensor_record in tensors:
                tensor_record.restore()
