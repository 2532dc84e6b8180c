"""Model-state safety: attribution must leave the training state exactly as it found it.

Attribution puts the model in eval mode, and the zennit backend registers hooks and canonizers that swap
parameters while they are registered (zennit 1.0.0 even replaces ``nn.Parameter`` objects and adds keys to the
``state_dict``). :class:`preserved_model_state` records the whole module tree before and puts every piece back
afterwards, also when an exception is raised half-way.
"""

from __future__ import annotations

import contextlib
import operator
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["preserved_model_state", "unwrap_model", "model_device", "set_eval", "run_eagerly", "ParameterWrites",
           "parameter_writes_undone", "operation_name", "changes_first_argument", "restore_all",
           "written_tensors", "WRITES_OTHERS"]


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


def run_eagerly(modules: Sequence[nn.Module]) -> None:
    """Modules compiled in place (``model.compile()``, which sets ``_compiled_call_impl``) run their eager forward:
    an attribution does not go through dynamo (a recompilation for eval mode and for the engine's hooks, seconds per
    new case). Inside :func:`preserved_model_state`, which puts the compiled call back with the module's
    attributes."""
    for module in modules:
        if module.__dict__.get("_compiled_call_impl") is not None:
            module.__dict__["_compiled_call_impl"] = None


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


class _TreeRecord:
    """A shallow record of the module tree: each module's attribute dict, and the contents of every dict/set held in
    one (parameters, buffers, submodules, every hook dict, ...), in flat lists (one pass each, no object per module).

    Most containers (the hook dicts) are empty and stay so: recorded without a copy. Restoring compares by identity
    with C-level loops first and touches only what changed.
    """

    __slots__ = ("modules", "attributes", "full", "empty")

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = modules
        self.attributes = attributes = [module.__dict__.copy() for module in modules]
        boxes = [value for saved in attributes for value in saved.values() if isinstance(value, (dict, set))]
        self.full = [(box, box.copy()) for box in boxes if box]  # (container, copy of its contents)
        self.empty = [box for box in boxes if not box]  # containers that were empty

    def restore(self) -> None:
        for module, attributes in zip(self.modules, self.attributes):
            current = module.__dict__
            if current.keys() != attributes.keys() or not all(map(operator.is_, current.values(),
                                                                   attributes.values())):
                for key in [key for key in current if key not in attributes]:
                    del current[key]  # e.g. a weight that zennit 1.0.0 left in the instance dict
                for key, value in attributes.items():
                    if current.get(key, _MISSING) is not value:
                        current[key] = value
        if any(self.empty):
            for box in self.empty:
                if box:
                    box.clear()
        for box, saved in self.full:
            if not _same_contents(box, saved):
                box.clear()
                box.update(saved)


_MISSING = object()


def _same_contents(current: dict | set, saved: dict | set) -> bool:
    # By identity, in order: `==` on tensors is elementwise.
    if isinstance(saved, set):
        return current == saved
    return len(current) == len(saved) and all(map(operator.eq, current, saved)) \
        and all(map(operator.is_, current.values(), saved.values()))


class _TensorsRecord:
    """Identity, storage, autograd flags, ``.grad``, hooks and (for ``cloned``) the values of parameters and
    buffers, in flat lists (compared with C-level loops on restore; only what changed is touched)."""

    __slots__ = ("tensors", "datas", "ptrs", "shapes", "flags", "grads", "hooks", "values")

    def __init__(self, tensors: list[torch.Tensor], cloned: list[torch.Tensor]) -> None:
        self.tensors = tensors
        self.datas = [tensor.data for tensor in tensors]  # alias the storage: lets us undo a `.data = ...` swap
        self.ptrs = [tensor.data_ptr() for tensor in tensors]
        self.shapes = [tensor.shape for tensor in tensors]
        self.flags = [tensor.requires_grad for tensor in tensors]
        self.grads = self._grads()
        self.hooks = [_hooks_record(tensors, name) for name in _TENSOR_HOOKS]
        self.values = [(tensor, tensor.detach().clone()) for tensor in cloned]

    def restore(self) -> None:
        tensors = self.tensors
        if [t.data_ptr() for t in tensors] != self.ptrs or [t.shape for t in tensors] != self.shapes:
            for tensor, data, ptr in zip(tensors, self.datas, self.ptrs):
                if tensor.data_ptr() != ptr or tensor.shape != data.shape:
                    tensor.data = data
        for tensor, values in self.values:
            restore_values(tensor, values)
        if [t.requires_grad for t in tensors] != self.flags:
            for tensor, flag in zip(tensors, self.flags):
                if tensor.requires_grad != flag:
                    if not tensor.is_leaf:  # given an autograd history in place (`self.last.copy_(h.mean(0))`
                        tensor.detach_()  # on a buffer): its values are back, its history goes
                    if tensor.requires_grad != flag:
                        tensor.requires_grad_(flag)
        grads = self._grads()
        if not all(map(operator.is_, grads, self.grads)):
            for tensor, grad, saved in zip(tensors, grads, self.grads):
                if grad is not saved:
                    tensor.grad = saved
        for name, record in zip(_TENSOR_HOOKS, self.hooks):
            current = [getattr(t, name, None) for t in tensors]
            if record is None:  # none had hooks of this kind
                if any(current):
                    for hooks in current:
                        if hooks:
                            hooks.clear()
                continue
            for hooks, saved in zip(current, record):
                if saved is None:
                    if hooks:
                        hooks.clear()
                elif hooks is not None and dict(hooks) != saved:
                    hooks.clear()
                    hooks.update(saved)

    def _grads(self) -> list:
        # a buffer with an autograd history (PyG's InstanceNorm assigns its running statistics undetached) has no
        # .grad, and reading it warns: such tensors are read through _grad
        if all(tensor.is_leaf for tensor in self.tensors):
            return [tensor.grad for tensor in self.tensors]
        return [_grad(tensor) for tensor in self.tensors]


def _grad(tensor: torch.Tensor) -> torch.Tensor | None:
    """``tensor.grad``, without torch's warning for a tensor that is not a leaf (and has none)."""
    return tensor.grad if tensor.is_leaf or tensor.retains_grad else None


# The hook dicts of a tensor (register_hook, register_post_accumulate_grad_hook)
_TENSOR_HOOKS = ("_backward_hooks", "_post_accumulate_grad_hooks")


def _hooks_record(tensors: list[torch.Tensor], name: str) -> list | None:
    """Copies of each tensor's hook dict ``name`` (``None`` for a tensor without), or ``None`` when none has one."""
    hooks = [getattr(tensor, name, None) for tensor in tensors]
    return [None if h is None else dict(h) for h in hooks] if any(h is not None for h in hooks) else None


def restore_values(tensor: torch.Tensor, values: torch.Tensor) -> None:
    if not bitwise_equal(tensor, values):
        # In place on `.data`: the parameter's autograd version counter is not bumped.
        tensor.data.copy_(values)


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
    instead of a clone and an ``equal`` each. Changed tensors get their values back one by one."""

    __slots__ = ("groups",)

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        kinds: dict = {}
        for tensor in tensors:
            kinds.setdefault((tensor.device, tensor.dtype, tensor.ndim), []).append(tensor)
        with torch.no_grad():
            self.groups = [(group, ndim, _joined(group, ndim), [t.shape for t in group])
                           for (_, _, ndim), group in kinds.items()]  # (tensors, ndim, their values in one, shapes)

    def restore(self) -> None:
        """(After every tensor's storage and shape are back: see :func:`preserved_model_state`.)"""
        for group, ndim, values, shapes in self.groups:
            if bitwise_equal(_joined(group, ndim), values):
                continue
            offset = 0
            for tensor, shape in zip(group, shapes):  # something changed: one by one
                size = shape.numel()
                restore_values(tensor, values[offset:offset + size].view(shape))
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
    modules = tuple(model.modules()) if modules is None else modules
    tree = _TreeRecord(modules)
    # While a CUDA graph is being captured nothing runs (the graph's writes happen at each replay), and comparing
    # values would synchronise, which a capture refuses: values are then neither recorded nor compared.
    values_too = not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())
    # each parameter and buffer once (a tensor shared by two modules too), in module order
    params = [t for attributes in tree.attributes for t in attributes.get("_parameters", {}).values() if t is not None]
    buffers = [t for attributes in tree.attributes for t in attributes.get("_buffers", {}).values() if t is not None]
    tensors = list(dict.fromkeys(params + buffers))  # (tensors hash by identity)
    kept = ((tensors if keep_values else list(dict.fromkeys(buffers))) if values_too else [])
    batched, cloned = [], []  # small values in one copy per kind (_ValueSnapshot), the others cloned each
    for t in kept:
        small = t.ndim <= 1 and t.layout == torch.strided and not t.is_meta and not t.is_quantized
        (batched if small else cloned).append(t)
    record = _TensorsRecord(tensors, cloned)
    values = _ValueSnapshot(batched)
    try:
        with _parametrization_cache_off():
            yield model
    finally:
        with torch.no_grad():
            restore_all(tree.restore, record.restore, values.restore)


@contextlib.contextmanager
def _parametrization_cache_off() -> Iterator[None]:
    """A block in which ``torch.nn.utils.parametrize.cached()`` (entered by the caller around a training step) does
    not cache on this thread: a parametrized weight computed here (in eval mode, from parameters that do not require
    grad, for relevance) would otherwise be what the caller's forward in the same ``cached()`` block reads, a constant
    that the parametrization's parameters get no gradient through; and a weight the caller cached (with its autograd
    graph, in train mode) would be read here. parametrize's cache (a module global) is seen through
    :class:`_NoCacheOnThread` for the block, which holds nothing for this thread and is the cache itself for every
    other one; caching stays on or off as the caller's blocks say (other threads may enter and leave theirs
    meanwhile: an inference forward beside the attribution; where the last block of all ends meanwhile, parametrize
    makes a new cache, which this thread then shares, unused unless yet another block starts before the end)."""
    from torch.nn.utils import parametrize

    cache = getattr(parametrize, "_cache", None)
    if not isinstance(cache, dict):
        yield
        return
    view = _NoCacheOnThread(cache)
    parametrize._cache = view
    try:
        yield
    finally:
        if parametrize._cache is view:  # (else a cached() block ended meanwhile and made a new, empty cache)
            parametrize._cache = cache


class _NoCacheOnThread(dict):
    """parametrize's cache seen from the thread that made it (empty, nothing stored) and from every other thread (the
    cache ``cache`` itself). parametrize reads it with ``get`` and writes it with ``[key] = value``."""

    __slots__ = ("cache", "thread")

    def __init__(self, cache: dict) -> None:
        super().__init__()
        self.cache = cache
        self.thread = threading.get_ident()

    def get(self, key, default=None):
        return default if threading.get_ident() == self.thread else self.cache.get(key, default)

    def __getitem__(self, key):
        if threading.get_ident() == self.thread:
            raise KeyError(key)
        return self.cache[key]

    def __setitem__(self, key, value) -> None:
        if threading.get_ident() != self.thread:
            self.cache[key] = value

    def __contains__(self, key) -> bool:
        return threading.get_ident() != self.thread and key in self.cache


def restore_all(*steps: Callable[[], None], retries: int = 3) -> None:
    """Run ``steps`` (restores of recorded state, each safe to run again) in turn, also where an asynchronous
    exception lands in one (Ctrl-C's ``KeyboardInterrupt`` while an attribution unwinds, a signal handler's): that
    step and the ones after it still run (the interrupted one again), then the interruption is raised. A step
    interrupted more than ``retries`` times in a row raises at once; an ordinary exception of a step propagates."""
    interrupted, index, tries = None, 0, 0
    while index < len(steps):
        try:
            steps[index]()
            index, tries = index + 1, 0
        except Exception:
            raise
        except BaseException as error:  # (KeyboardInterrupt, SystemExit: not the step's own failure)
            interrupted = error if interrupted is None else interrupted
            tries += 1
            if tries > retries:
                raise
    if interrupted is not None:
        raise interrupted


class ParameterWrites:
    """The values of the parameters that in-place operations of a forward change (a max-norm constraint applied in
    ``forward``: ``self.weight.copy_(...)`` under ``no_grad``), copied just before the first change of each and put
    back by :meth:`restore`: what :func:`preserved_model_state` does not record without ``keep_values`` (a copy of
    every parameter), at the price of a copy of only those that change. Changes made without an operation the
    caller reports (an ``out=`` argument, a C++ extension's kernel) are not seen."""

    __slots__ = ("modules", "saved", "storages")

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = modules
        self.storages: dict[int, list[torch.Tensor]] | None = None  # storage address -> parameters (made on first use)
        self.saved: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> its values before the first change

    def before_change(self, tensor: torch.Tensor) -> None:
        """``tensor`` (or a view of it, or its ``.data``) is about to change in place."""
        storages = self.storages
        if storages is None:
            storages = self.storages = {}
            for module in self.modules:
                for param in module._parameters.values():
                    if isinstance(param, torch.Tensor) and param.layout == torch.strided and not param.is_meta:
                        storages.setdefault(param.untyped_storage().data_ptr(), []).append(param)
        if not storages or tensor.layout != torch.strided or tensor.is_meta:
            return
        for param in storages.get(tensor.untyped_storage().data_ptr(), ()):
            if param not in self.saved:
                self.saved[param] = param.detach().clone()

    def restore(self) -> None:
        if self.saved:
            with torch.no_grad():
                for param, values in self.saved.items():
                    restore_values(param, values)
            self.saved.clear()


def operation_name(func) -> str:
    """The name of a torch operation as a ``TorchFunctionMode`` sees it: ``add``, ``add_``, ``__iadd__``; an aten
    overload's without its overload (``torch.ops.aten.add_.Scalar``: ``add_``)."""
    name = getattr(func, "__name__", "")
    return name.split(".", 1)[0] if "." in name else name


def written_tensors(func, args: tuple, kwargs: dict | None) -> list[torch.Tensor]:
    """The tensors that ``func(*args, **kwargs)`` changes in place other than a first argument the operation's name
    says it changes (:func:`changes_first_argument`): each tensor of an in-place ``_foreach_*_`` operation's first
    list (``torch._foreach_clamp_min_([w], 0)``), and the weight of ``F.embedding`` / ``F.embedding_bag`` with a
    ``max_norm``, which renorm its rows in place inside (unseen by a ``TorchFunctionMode``)."""
    name = operation_name(func)
    if name.startswith("_foreach_") and name.endswith("_"):
        first = args[0] if args else (kwargs or {}).get("self")
        return [t for t in first if isinstance(t, torch.Tensor)] if isinstance(first, (list, tuple)) else []
    if func is nn.functional.embedding or func is nn.functional.embedding_bag:
        kwargs = kwargs or {}
        weight = args[1] if len(args) > 1 else kwargs.get("weight")  # (input, weight, padding_idx or offsets,
        max_norm = args[3] if len(args) > 3 else kwargs.get("max_norm")  # max_norm, ...)
        return [weight] if max_norm is not None and isinstance(weight, torch.Tensor) else []
    return []


WRITES_OTHERS = frozenset({"embedding", "embedding_bag"})  # names (besides _foreach_*_) :func:`written_tensors` reads


def changes_first_argument(name: str) -> bool:
    """Whether the operation named ``name`` (:func:`operation_name`) changes its first argument in place: ``add_``,
    ``relu_``, ``__iadd__``, ``__setitem__`` (not ``__get__``)."""
    if name.startswith("__"):
        return name == "__setitem__" or name.startswith("__i")
    return name.endswith("_")


class _WatchParameterWrites(TorchFunctionMode):
    def __init__(self, writes: ParameterWrites) -> None:
        super().__init__()
        self.writes = writes

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if args and isinstance(args[0], torch.Tensor) and (changes_first_argument(operation_name(func))
                                                            or kwargs and kwargs.get("inplace") is True):
            self.writes.before_change(args[0])
        else:
            for tensor in written_tensors(func, args, kwargs):
                self.writes.before_change(tensor)
        return func(*args, **kwargs) if kwargs else func(*args)


@contextlib.contextmanager
def parameter_writes_undone(modules: Sequence[nn.Module]) -> Iterator[None]:
    """A block (a plain forward) whose in-place changes of the parameters of ``modules`` are undone on exit
    (:class:`ParameterWrites`, seen by a ``TorchFunctionMode``), also when it raises."""
    writes = ParameterWrites(modules)
    try:
        with _WatchParameterWrites(writes):
            yield
    finally:
        restore_all(writes.restore)
