"""``Attributor``: the one attribution path behind every transform (engines, state guard, locks, CUDA graphs)."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import NoReturn

import torch
from torch import Tensor, nn

from .._checks import (check_backend, check_bool, check_dtype, check_epsilon, check_homogeneous, check_keys,
                       check_labels, check_model)
from .._containers import copy_tensors
from ._composites import check_composite, check_picklable, zennit_relevance
from ._fast import FAST_COMPOSITES, UnsupportedModel, fast_relevance
from ._graphs import GraphCache
from ._rules import ExplanationError, RuleTypes, explanation_problem, inputs_only_carry_relevance, rule_types
from ._state import (model_device, parameter_writes_undone, preserved_model_state, run_eagerly, set_eval,
                     unwrap_model)

__all__ = ["Attributor", "RelevanceBackendWarning", "model_lock", "check_not_in_worker", "check_inputs",
           "output_relevance", "check_finite"]

_log = logging.getLogger("reldrop_transforms")

# One lock for every attribution in the process: a pass changes flags of the modules and parameters it runs
# through (eval mode, requires_grad, an activation's inplace), and two models may share submodules or parameters
# (a backbone under two heads, tied weights), so passes take turns whatever model they attribute. Re-entrant: a
# transform holds it around one batch's draws and then its attribution (never one attribution inside another: see
# _attributing_model).
_LOCK = threading.RLock()

# What a model's own forward raises on a batch it cannot take (shapes, dtypes, indices).
MODEL_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises attributions: of ``model`` (the unwrapped module), and of any other model, which may
    share its submodules or parameters. Hold it around a training step (or any forward) of ``model`` that runs while
    another thread may attribute it (a prefetcher): attribution changes the model's flags and hooks for a call.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> with model_lock(model):  # no attribution of any model runs in between
        ...     loss = model(torch.randn(4, 3)).sum()
        ...     loss.backward()
    """
    return _LOCK


class _Attributing(threading.local):
    depth = 0  # attributions running in this thread (0 or 1: see _attributing_model)


_attributing = _Attributing()


@contextlib.contextmanager
def _attributing_model(module: nn.Module) -> Iterator[None]:
    """The attribution lock, and this thread's count of running attributions (see :meth:`Attributor.__getstate__`).
    An attribution never starts inside another one (from a ``forward_fn``, a hook or a forward that the outer pass
    runs): the model is hooked for that pass, and the inner one's results would be the outer engine's."""
    with model_lock(module):
        if _attributing.depth:
            raise ExplanationError(
                "an attribution cannot start inside another one (from a forward_fn, a hook or a model's forward that "
                "an attribution runs): the models are in eval mode and hooked for the running pass. Attribute before "
                "or after it."
            )
        _attributing.depth += 1
        try:
            yield
        finally:
            _attributing.depth -= 1


class RelevanceBackendWarning(UserWarning):
    """Kept for code that filters it: ``backend="auto"`` no longer falls back from the fast engine to zennit (the
    fast engine computes ``"epsilon_flat"`` on every model zennit can explain, and both refuse the others)."""


def check_not_in_worker(caller: str) -> None:
    """Attribution in a DataLoader worker would use a stale copy of the model (and no CUDA after fork)."""
    if torch.utils.data.get_worker_info() is not None:
        raise RuntimeError(
            f"{caller} runs inside a DataLoader worker process, which holds a stale copy of the model and cannot use "
            "CUDA after fork. Attribute in the main process: wrap the loader with "
            "reldrop_transforms.RelevanceLoader(loader, transform) (workers allowed), or use RelevanceCollate only "
            "with num_workers=0."
        )


def check_inputs(model: nn.Module, inputs: Tensor, *, caller: str = "relevance",
                 autocast: torch.dtype | None = None) -> None:
    """The inputs are a floating tensor batch on the model's device, in the model's dtype; ``autocast`` (the
    Attributor's ``dtype``) can lower the model's precision: it is float32 (or already ``autocast``)."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{caller} expects the inputs as a torch.Tensor, but got {type(inputs).__name__}.")
    if not inputs.is_floating_point():
        raise TypeError(
            f"{caller} expects floating-point inputs, but got dtype {inputs.dtype}. Convert them first (images e.g. "
            "with v2.ToDtype(torch.float32, scale=True), points with .float())."
        )
    if inputs.ndim < 1:
        raise ValueError(f"{caller} expects a batch of shape (B, *), but got a scalar.")
    if inputs.ndim > 1 and 0 in inputs.shape[1:]:
        raise ValueError(f"{caller} expects samples with at least one element each, but got a batch of shape "
                         f"{tuple(inputs.shape)}.")
    device = model_device(model)
    if (device.type == "meta") if device is not None else inputs.is_meta:  # (meta inputs to a model elsewhere:
        where = "inputs are" if device is None else "model's parameters are"  # told to move them, below)
        raise ValueError(
            f"{caller}: the {where} on the meta device, which holds no data: an attribution needs real values. "
            "Materialise the model first (model.to_empty(device=...) and load_state_dict) and give it a batch on "
            "the same device."
        )
    if device is not None and inputs.device != device:
        raise ValueError(
            f"{caller}: the inputs are on {inputs.device} but the model is on {device}. Move the batch to "
            f"{device} first, or wrap the loader with RelevanceLoader, which does so."
        )
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and inputs.dtype != dtype:
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}  # (a model of mixed precision
        if inputs.dtype not in dtypes:  # takes the dtype of one of its parts: its own forward tells which)
            have = dtype if len(dtypes) == 1 else " or ".join(sorted(str(d) for d in dtypes))
            raise ValueError(
                f"{caller}: the inputs have dtype {inputs.dtype} but the model's parameters have {have}. "
                "Convert one of them so that they match."
            )
        dtype = inputs.dtype
    if autocast is not None and dtype is not None and dtype not in (torch.float32, autocast):
        effect = "it would change nothing" if dtype == torch.float64 else \
            "from one half precision to the other, the model's own operations fail"
        raise ValueError(
            f"{caller}: dtype={autocast} runs the attribution under autocast, which lowers float32 operations only, "
            f"but the model's parameters are {dtype} ({effect}). Use dtype=None to attribute in the model's own "
            "precision, or keep the model in float32."
        )


def _soft_label_shape(targets: Tensor, num_classes: int) -> str:
    message = (f"soft labels should have shape (B, K) = ({targets.shape[0]}, {num_classes}) (the model has "
               f"{num_classes} outputs), but got {tuple(targets.shape)}.")
    if targets.shape[1] == 1:  # class indices in a column, as PyG's y = [[c]] collates
        message += " Class indices should have shape (B,): labels.squeeze(1)."
    return message


def check_class_range(targets: Tensor | None, num_classes: int) -> None:
    """Class indices lie in [0, num_classes); soft labels have ``num_classes`` columns."""
    if targets is None:
        return
    if targets.ndim == 2:
        if targets.shape[1] != num_classes:
            raise ValueError(_soft_label_shape(targets, num_classes))
        return
    outside = (targets < 0) | (targets >= num_classes)
    if bool(outside.any()):
        bad = targets[outside][:5].tolist()
        raise ValueError(
            f"labels should be class indices in [0, {num_classes - 1}] (the model has {num_classes} outputs), "
            f"but got {bad}."
        )


def output_relevance(logits: Tensor, targets: Tensor | None, batch_size: int, *,
                     all_targets: Tensor | None = None) -> Tensor:
    """The relevance put on the model's output: one-hot targets, soft targets as given, or the predicted class.

    ``all_targets``: the whole batch's labels, range-checked too (when ``targets`` are those of some samples).
    """
    num_classes = _num_outputs(logits, batch_size)
    check_class_range(targets if all_targets is None else all_targets, num_classes)
    if targets is None:
        return nn.functional.one_hot(logits.detach().argmax(1), num_classes).to(logits.dtype)
    targets = targets.to(logits.device)
    if targets.ndim == 1:
        return nn.functional.one_hot(targets.long(), num_classes).to(logits.dtype)
    return targets.to(dtype=logits.dtype, copy=True)  # (a copy: a model without layers hands it back as relevance)


def _non_finite_rows(tensor: Tensor) -> Tensor | None:
    """The rows (samples) of ``tensor`` holding a NaN or infinite value, or ``None`` (one synchronisation)."""
    finite = torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(1)
    return None if bool(finite.all()) else (~finite).nonzero().flatten()


def _samples(rows: Tensor) -> str:
    return f"{rows[:10].tolist()}{' ...' if rows.numel() > 10 else ''}"


def check_finite_batch(inputs: Tensor | None, targets: Tensor | None, caller: str = "relevance",
                       index: Tensor | None = None, what: str = "inputs") -> None:
    """Raise a ValueError naming the samples whose inputs (or soft labels) are NaN or infinite (one
    synchronisation). ``index`` maps the rows of ``inputs`` to samples (a PyG batch's ``batch`` vector: its nodes
    to its clouds); ``what`` names the inputs."""
    for name, tensor in ((what, inputs), ("soft labels", targets)):
        if tensor is None or not tensor.is_floating_point() or tensor.shape[0] == 0:
            continue
        bad = _non_finite_rows(tensor)
        if bad is not None and index is not None and tensor is inputs:
            bad = index[bad].unique()
        if bad is not None:
            raise ValueError(
                f"{caller}: the {name} should be finite, but are not (NaN or infinite values) for sample(s) "
                f"{_samples(bad)} of the batch."
            )


def check_index(index, batch_size: int, device: torch.device, *, in_range: bool = True) -> Tensor:
    """``index`` of :meth:`Attributor.__call__` as int64 row numbers on ``device``: a 1-d integer tensor (each in
    ``[0, batch_size)``, checked with ``in_range``: one synchronisation) or a boolean mask ``(batch_size,)``."""
    if not isinstance(index, Tensor):
        raise TypeError(f"index should be a 1-d tensor of row numbers or a boolean mask, but got "
                        f"{type(index).__name__}.")
    if index.dtype == torch.bool:
        if index.shape != (batch_size,):
            raise ValueError(f"a boolean index should have the batch's shape ({batch_size},), but got "
                             f"{tuple(index.shape)}.")
        return index.to(device).nonzero().view(-1)
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8) or index.ndim > 1:
        raise ValueError(f"index should be a 1-d tensor of row numbers (a signed integer dtype) or a boolean mask, "
                         f"but got a {index.ndim}-d {index.dtype} tensor.")
    index = index.to(device=device, dtype=torch.long).reshape(-1)  # (a 0-d index: one row)
    if in_range and index.numel() and not bool(((index >= 0) & (index < batch_size)).all()):
        raise ValueError(f"index should hold row numbers in [0, {batch_size}) for a batch of {batch_size}, but got "
                         f"{index.min().item()}..{index.max().item()}.")
    return index


def check_finite(rel: Tensor, caller: str = "relevance", index: Tensor | None = None) -> None:
    """Raise a ValueError naming the samples whose relevance is NaN or infinite (one synchronisation).

    ``index`` maps the rows of ``rel`` to positions in the caller's batch (when only some samples were attributed).
    """
    bad = _non_finite_rows(rel)
    if bad is None:
        return
    if index is not None:
        bad = index[bad].unique()
    n_nan = int(torch.isnan(rel).sum())
    n_inf = int(torch.isinf(rel).sum())
    raise ValueError(
        f"{caller}: the relevance is not finite ({n_nan} NaN and {n_inf} infinite values) for sample(s) "
        f"{_samples(bad)} of the batch. Check the model's outputs for these inputs, and use epsilon > 0."
    )


class Attributor:
    """LRP relevance of the *current* ``model``, computed without touching its training state.

    Every transform holds one; it can also be used directly. Each call unwraps the model (DDP, DataParallel,
    ``torch.compile``), refuses to run in a DataLoader worker, puts the model in eval mode and attributes it, then
    restores it exactly: the same parameter objects with the same values, buffers bit for bit, ``.grad``,
    ``requires_grad``, every submodule's train/eval flag and no hooks left, also when the model raises.
    Attributions never interleave: they share one lock (two models may share submodules or parameters, whose flags
    a pass changes), so several threads may attribute at once (they take turns). The lock serialises
    attributions, not your training step: never attribute while a training step of the same model runs in another
    thread.

    Backends: ``"fast"`` computes the composite ``"epsilon_flat"`` exactly as zennit defines it (the rules are
    listed in :mod:`reldrop_transforms.attribution._rules`) in one eval forward and one backward, on any model
    zennit can explain; ``"zennit"`` runs zennit's own hooks (the reference, 2-5x slower); ``"auto"`` (default)
    uses the fast engine for ``"epsilon_flat"`` and zennit for other composites. The decision is taken on every
    call from the forward actually run; nothing about the model is cached. Models without an LRP rule
    (``nn.MultiheadAttention``, BatchNorm without running statistics) and outputs that are not ``(B, K)``
    logits get a ``ValueError`` naming the module or shape, from both backends.

    Args:
        model: A classifier returning logits ``(B, K)``; held by reference (``attributor.model = other``
            rebinds it).
        composite: ``"epsilon_flat"`` (the paper's), a zennit registry name such as ``"epsilon_plus_flat"``,
            or a zennit ``Composite``.
        epsilon: The Epsilon rule's stabiliser (the paper found 1e-3 best).
        backend: ``"auto"``, ``"fast"`` or ``"zennit"``.
        dtype: Attribute under autocast in this dtype, ``torch.bfloat16`` or ``torch.float16``, for a float32
            model (autocast lowers float32 operations only: a model in float64 or the other half precision gets a
            ``ValueError`` at the call); ``None`` (default) disables autocast, so attribution runs in the model's
            own precision.
        cuda_graphs: Let :meth:`then` capture attribution and the caller's mask in one CUDA graph per input
            shape (CUDA, fast engine, ``dtype=None`` only; CPU stays eager). Keeps one graph's memory per shape.
        max_graphs: How many captured graphs are kept (least recently used evicted).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> attributor = Attributor(model)
        >>> attributor(torch.randn(2, 3, 2, 2), torch.tensor([0, 2])).shape
        torch.Size([2, 3, 2, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        composite="epsilon_flat",
        epsilon: float = 1e-3,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
        max_graphs: int = 4,
    ) -> None:
        self.model = model
        check_composite(composite)
        self.composite = composite
        self.epsilon = check_epsilon(epsilon)
        self.backend = check_backend(backend)
        if backend == "fast" and not self._fast_composite:
            raise ValueError(
                f"backend='fast' computes the composites {FAST_COMPOSITES}, but got composite={composite!r}; "
                "use backend='zennit' or 'auto' for other composites."
            )
        self.dtype = check_dtype(dtype)
        self.cuda_graphs = check_bool("cuda_graphs", cuda_graphs)
        self._graphs = GraphCache(max_graphs)
        self._said: set = set()
        self._types: RuleTypes | None = None
        self._hints: dict = {}  # what the fast engine learnt of this model's forward (a speed hint, never a verdict)

    # -- the model -------------------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The model that is attributed (held by reference)."""
        return self._model

    @model.setter
    def model(self, model: nn.Module) -> None:
        self._model = check_model(model)
        self._hints = {}

    def __getstate__(self) -> dict:
        check_picklable(self.composite)  # (zennit's Composite objects do not pickle: say what does)
        return self._state()

    def _state(self) -> dict:
        with model_lock(self._model):  # waits for another thread's attribution (pickle then copies the model)
            if _attributing.depth:
                raise RuntimeError("an Attributor (or a transform) cannot be copied or pickled while an attribution "
                                   "runs in this thread (from a hook or a forward_fn inside it): the model is in "
                                   "its attribution state there (eval mode, hooks); copy it before or after the call.")
            state = self.__dict__.copy()
        state["_graphs"] = self._graphs.max_entries  # captured CUDA graphs do not travel
        state["_types"] = None  # a cache, rebuilt on use
        state["_hints"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["_graphs"] = GraphCache(state["_graphs"])
        self.__dict__.update(state)

    def __deepcopy__(self, memo: dict) -> "Attributor":
        clone = Attributor.__new__(Attributor)
        memo[id(self)] = clone
        with model_lock(self._model):  # the model is copied as no attribution has it (its flags, hooks)
            clone.__setstate__(copy.deepcopy(self._state(), memo))
        return clone

    def __repr__(self) -> str:
        return (f"Attributor({type(self.model).__name__}, composite={self.composite!r}, epsilon={self.epsilon}, "
                f"backend={self.backend!r}, dtype={self.dtype}, cuda_graphs={self.cuda_graphs})")

    @property
    def _fast_composite(self) -> bool:
        return isinstance(self.composite, str) and self.composite in FAST_COMPOSITES

    # -- public calls ----------------------------------------------------------------------------------------
    def check_batch(self, inputs: Tensor, targets: Tensor | None = None, *, caller: str = "relevance",
                    what: str = "samples") -> Tensor | None:
        """Validate a tensor batch and its labels as :meth:`__call__` will (not in a DataLoader worker; floating
        inputs on the model's device and in its dtype; labels of the batch's size and a valid dtype), before any
        random draw of the caller. Returns the labels as a plain tensor."""
        check_not_in_worker(caller)
        check_inputs(unwrap_model(self.model), inputs, caller=caller, autocast=self.dtype)
        return check_labels(targets, inputs.shape[0], what)

    def __call__(self, inputs: Tensor, targets: Tensor | None = None, *, index: Tensor | None = None,
                 check_finite: bool = True, caller: str = "relevance", checked: bool = False) -> Tensor:
        """Relevance of a tensor batch (of the rows ``index`` only, when given).

        Args:
            inputs: The batch ``(B, *)``, floating, on the model's device.
            targets: Class indices ``(B,)``, one-hot or soft labels ``(B, K)`` (the output relevance as given), or
                ``None`` for the predicted class. All ``B`` are validated, also with ``index``.
            index: Attribute only these rows (e.g. the samples whose coin came up): a 1-d integer tensor of row
                numbers in ``[0, B)``, or a boolean mask ``(B,)``; the result has one row each. A single row is
                attributed along with another one (a model may not take a batch of one: ``.squeeze()`` before its
                head), whose relevance is dropped.
            check_finite: Raise a ``ValueError`` naming the samples whose relevance is NaN or infinite (one
                host-device synchronisation).
            caller: The name used in error messages.
            checked: The caller already validated ``inputs`` and ``targets`` with :meth:`check_batch` (and passes
                the labels it returned): not repeated.

        Shape:
            - output: ``inputs[index]``'s shape (``inputs``' without ``index``), ``inputs``' dtype.
        """
        if not checked:
            targets = self.check_batch(inputs, targets, caller=caller)
        if check_finite:  # the whole batch, whichever rows are attributed: the same error whatever the coins
            check_finite_batch(inputs, targets, caller)
        module = unwrap_model(self.model)
        selected, selected_targets, rows = inputs, targets, None
        if index is not None:
            index = check_index(index, inputs.shape[0], inputs.device, in_range=not checked)
            if index.shape[0] == 0:  # still run the model on the first samples, and validate every label against
                try:  # its outputs: the same errors whatever the coins
                    num_outputs = self._first_outputs(module, inputs)
                except ExplanationError:
                    raise
                except MODEL_ERRORS as error:
                    self._raise_as_the_whole_batch(module, lambda: module(inputs.clone()), inputs.shape[0], error)
                if targets is not None:  # whatever the coins
                    check_class_range(targets, num_outputs)
                return inputs[:0].detach().clone()
            rows = index.shape[0]
            if rows == 1 and inputs.shape[0] >= 2:  # a forward on one sample is one a model may not take (`.squeeze()`
                index = torch.cat([index, (index[:1] == 0).to(index.dtype)])  # before its head) where the batch
                # works: another row goes along, its relevance dropped (a sample's relevance is its own)
            selected = inputs.index_select(0, index)
            selected_targets = None if targets is None else targets.index_select(0, index.to(targets.device))
        if selected.numel() == 0:
            return torch.zeros_like(selected)

        def grad_output_fn(logits: Tensor) -> Tensor:
            return output_relevance(logits, selected_targets, selected.shape[0],
                                    all_targets=None if index is None else targets)

        try:
            (rel,) = self._attribute(module, (selected,), lambda x: module(x), grad_output_fn, check_zero=check_finite)
        except ExplanationError:  # the library's own: the same whatever the coins
            raise
        except MODEL_ERRORS as error:  # an error of the model's own forward on the rows the coins selected names
            if index is None:  # them (torch's "expected input[3, 1, 8, 8] to have 3 channels"): the whole batch's
                raise  # error instead, the same whatever the coins (and as with p = 1)
            self._raise_as_the_whole_batch(module, lambda: module(inputs.clone()), inputs.shape[0], error)
        if rows is not None and rows < rel.shape[0]:
            rel, index = rel[:rows], index[:rows]
        if check_finite:
            check_finite_(rel, caller, index)
        return rel

    def attribute_graph(self, data, targets: Tensor | None = None, *, keys: Sequence[str] = ("pos", "x"),
                        forward_fn: Callable | None = None, index: Tensor | None = None, check_finite: bool = True,
                        caller: str = "relevance_graph", checked: bool = False) -> dict[str, Tensor]:
        """Relevance of a PyTorch Geometric ``Data``/``Batch`` with respect to its node tensors (of the clouds ``index``
        only, when given).

        The node attributes named in ``keys`` that the data has (``pos`` is required, ``x`` is used where present)
        are each replaced by a leaf in a shallow copy of ``data`` that is passed to ``forward_fn(model, data)``
        (default ``model(data)``; it receives the unwrapped module).

        Args:
            data: A ``torch_geometric.data.Batch`` (or a single ``Data``: one cloud) on the model's device.
            targets: Class indices ``(num_graphs,)``, soft labels ``(num_graphs, K)``, or ``None`` (predicted
                class). All are validated, also with ``index``.
            keys: Node attributes to attribute.
            forward_fn: ``forward_fn(model, data) -> logits`` for models with other call signatures.
            index: Attribute only these clouds (e.g. those whose coin came up): cloud numbers or a boolean mask
                ``(num_graphs,)``, as for :meth:`__call__`. The model then runs on a batch of those clouds alone,
                ``Batch.from_data_list(data.index_select(index))`` (with another cloud where one is selected, its
                relevance dropped), as a DataLoader would have batched them; where that batch would not hold what
                ``data`` does (attributes set after collation, node tensors resized since), on the whole ``data``.
            check_finite: As in :meth:`__call__`; the error names the clouds.
            checked: The caller already validated ``data`` and ``targets`` with :meth:`check_graph`.

        Returns:
            ``{key: relevance}`` with each relevance of the attribute's shape, for the keys present in ``data``; with
            ``index``, the rows of those clouds' nodes, cloud by cloud in the order of ``index``.
        """
        if checked:
            present = [key for key in keys if isinstance(getattr(data, key, None), Tensor)]
        else:
            present, targets = self.check_graph(data, targets, keys=keys, forward_fn=forward_fn, caller=caller)
        module = unwrap_model(self.model)
        num_nodes, num_graphs = data.pos.shape[0], getattr(data, "num_graphs", 1)
        if index is not None:
            index = check_index(index, num_graphs, data.pos.device, in_range=not checked)
        if num_nodes == 0:
            return {key: torch.zeros_like(data[key]) for key in present}

        def plain(batch) -> Callable[[], Tensor]:  # a plain forward of `batch` (for its outputs, or its error)
            return lambda: graph_forward(module, _graph_view(batch, present, [batch[key].clone() for key in present]),
                                         forward_fn)

        if check_finite:  # the inputs first: their error says so (not that the relevance is not finite)
            for key in present:
                check_finite_batch(data[key], None, caller, index=getattr(data, "batch", None),
                                   what=f"inputs (`{key}`)")
            check_finite_batch(None, targets, caller)
        selected, selected_targets, clouds = data, targets, None
        if index is not None:
            clouds = index
            if index.shape[0] == 1 and num_graphs >= 2:  # another cloud goes along (as in __call__), its relevance
                clouds = torch.cat([index, (index[:1] == 0).to(index.dtype)])  # dropped
            if index.shape[0] == 0:
                clouds = torch.arange(min(2, num_graphs), device=index.device)
            every = clouds.shape[0] == num_graphs and bool((clouds == torch.arange(num_graphs, device=clouds.device))
                                                          .all())
            selected = data if every else _sub_batch(data, clouds)  # (all of them, in order: the batch itself)
            if selected is not None:
                selected_targets = None if targets is None else targets.index_select(0, clouds.to(targets.device))
            if index.shape[0] == 0:  # still run the model (on the first clouds where a batch of them can be made),
                first = data if selected is None else selected  # and validate every label against its outputs:
                try:  # the same errors whatever the coins
                    num_outputs = self._plain_outputs(module, plain(first), getattr(first, "num_graphs", 1))
                except ExplanationError:
                    raise
                except MODEL_ERRORS as error:
                    self._raise_as_the_whole_batch(module, plain(data), num_graphs, error)
                if targets is not None:
                    check_class_range(targets, num_outputs)
                return {key: data[key][:0].detach().clone() for key in present}
            if selected is None:  # the whole batch, then its rows of the selected clouds
                selected, clouds = data, None
        num_selected = getattr(selected, "num_graphs", 1)

        def call(*leaves: Tensor) -> Tensor:
            return graph_forward(module, _graph_view(selected, present, leaves), forward_fn)

        def grad_output_fn(logits: Tensor) -> Tensor:
            return output_relevance(logits, selected_targets, num_selected,
                                    all_targets=None if clouds is None else targets)

        try:
            rels = self._attribute(module, tuple(selected[key] for key in present), call, grad_output_fn,
                                   check_zero=check_finite)
        except ExplanationError:  # the library's own: the same whatever the coins
            raise
        except MODEL_ERRORS as error:  # the model's own forward on the selected clouds: the whole batch's error
            if index is None:
                raise
            self._raise_as_the_whole_batch(module, plain(data), num_graphs, error)
        if index is not None:  # the nodes of the clouds `index`, in its order
            ptr = _graph_ptr(data)
            counts = ptr.diff().index_select(0, index)
            if clouds is not None:  # the sub-batch: its first nodes are those, in that order
                rels = tuple(rel[:int(counts.sum())] for rel in rels)
            else:
                rels = tuple(rel.index_select(0, _cloud_nodes(ptr, index, counts)) for rel in rels)
        if check_finite:  # (each row's cloud named)
            batch = getattr(data, "batch", None) if index is None else torch.repeat_interleave(index, counts)
            for rel in rels:
                check_finite_(rel, caller, batch)
        return dict(zip(present, rels))

    def check_graph(self, data, targets: Tensor | None = None, *, keys: Sequence[str] = ("pos", "x"),
                    forward_fn: Callable | None = None, caller: str = "relevance_graph") -> tuple[list, Tensor | None]:
        """Validate a PyG ``Data``/``Batch`` and its labels as :meth:`attribute_graph` will, before any random draw
        of the caller. Returns the keys present and the labels as a plain tensor."""
        check_not_in_worker(caller)
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"forward_fn should be callable, but got {type(forward_fn).__name__}.")
        module = unwrap_model(self.model)
        check_homogeneous(caller, data)
        if getattr(data, "pos", None) is None:
            raise ValueError(
                f"{caller} expects point clouds with node positions `pos`, but the {type(data).__name__} has none."
            )
        keys = check_keys(keys)
        present = [key for key in keys if isinstance(getattr(data, key, None), Tensor)]
        if not present:
            names = data.keys()  # (iterating a Data gives its items)
            raise ValueError(f"{caller}: none of the keys {keys} names a tensor of the {type(data).__name__}, which "
                             f"has {sorted(k for k in names if isinstance(data[k], Tensor))}.")
        num_nodes = data.pos.shape[0]
        for key in present:
            value = data[key]
            if key != "pos" and not (value.is_floating_point() or value.is_complex()):
                others = tuple(k for k in keys if k != key)
                raise TypeError(
                    f"{caller}: `{key}` (one of keys={keys}) holds dtype {value.dtype}, but the attributed node "
                    f"attributes must be floating point. If `{key}` holds indices or categories (e.g. embedded by the "
                    f"model), leave it out of the attribution with keys={others}; if it holds features, convert it "
                    f"first with .float()."
                )
            check_inputs(module, value, caller=f"{caller} ({key})", autocast=self.dtype)
            if data[key].shape[0] != num_nodes:
                raise ValueError(f"{caller}: `{key}` has {data[key].shape[0]} rows but `pos` has {num_nodes} nodes.")
        return present, check_labels(targets, getattr(data, "num_graphs", 1), "clouds")

    def drawing(self) -> threading.RLock:
        """A lock for the caller's random draws of one batch (``with attributor.drawing(): ...``): the attribution
        lock, so that two threads calling one transform with one generator draw each batch's numbers in one piece
        (the outputs are those of the calls in some order, never a mix)."""
        return model_lock(unwrap_model(self.model))

    def graphs_apply(self, inputs: Tensor) -> bool:
        """Whether :meth:`then` replays a captured CUDA graph for this batch (else it runs eagerly)."""
        return (self.cuda_graphs and inputs.is_cuda and self.dtype is None and self.backend in ("auto", "fast")
                and self._fast_composite)

    def then(self, inputs: Tensor, targets: Tensor | None, post: Callable[..., tuple[Tensor, ...]],
             post_inputs: Sequence[Tensor] = (), key: Hashable = (), caller: str = "relevance",
             checked: bool = False) -> tuple[Tensor, ...]:
        """``post(relevance, *post_inputs)`` for the whole batch, as one captured CUDA graph where
        :meth:`graphs_apply` (one graph per shape, replayed per batch), eagerly otherwise.

        ``post`` must be a pure tensor function (no host synchronisation, no random draws: draw them into
        ``post_inputs``); ``key`` names its settings (a new key is a new graph). The outputs of a replay are copies
        of its static buffers, made while the attribution lock is held (another thread's replay overwrites them).
        Labels are validated before (unless ``checked``, as in :meth:`__call__`), and the finiteness of the relevance
        after, with one synchronisation per batch.
        """
        if not self.graphs_apply(inputs):
            return tuple(post(self(inputs, targets, caller=caller, checked=checked), *post_inputs))
        if not checked:
            targets = self.check_batch(inputs, targets, caller=caller)
        module = unwrap_model(self.model)

        def attribute(static: tuple[Tensor, ...], grad_output_fn: Callable) -> tuple[Tensor, ...]:
            leaves = fresh_leaves(static[:1])
            return fast_relevance(module, leaves, lambda: module(*fed_copies(leaves)), grad_output_fn, self.epsilon,
                                  self._rule_types())

        outputs = self._replay(module, (inputs,), targets, inputs.shape[0], attribute,
                               lambda rels, *rest: post(rels[0], *rest), post_inputs, key)
        if outputs is None:  # one synchronisation per batch said no: redo eagerly, for the precise error
            self(inputs, targets, caller=caller)
            raise ValueError(f"{caller}: invalid labels or non-finite relevance in this batch.")
        return outputs

    def then_graph(self, data, targets: Tensor | None, post: Callable[..., tuple[Tensor, ...]],
                   post_inputs: Sequence[Tensor] = (), key: Hashable = (), *, keys: Sequence[str] = ("pos", "x"),
                   forward_fn: Callable | None = None, caller: str = "relevance_graph",
                   checked: bool = False) -> tuple[Tensor, ...]:
        """:meth:`then` for a PyG ``Batch``: ``post(relevance_dict, *post_inputs)`` as one captured CUDA graph per
        shape of the batch's tensors (node, edge and cloud counts; at most ``max_graphs`` kept), eagerly otherwise.
        The model's forward must not synchronise with the host (no ``.item()``, no data-dependent sizes)."""
        if not self.graphs_apply(data.pos):
            rels = self.attribute_graph(data, targets, keys=keys, forward_fn=forward_fn, caller=caller,
                                        checked=checked)
            return tuple(post(rels, *post_inputs))
        if checked:
            present = [k for k in keys if isinstance(getattr(data, k, None), Tensor)]
        else:
            present, targets = self.check_graph(data, targets, keys=keys, forward_fn=forward_fn, caller=caller)
        module = unwrap_model(self.model)
        names = [k for k in data.keys() if isinstance(data[k], Tensor)]  # every tensor is a static input

        def attribute(static: tuple[Tensor, ...], grad_output_fn: Callable) -> tuple[Tensor, ...]:
            view = copy.copy(data)
            for name, tensor in zip(names, static):
                view[name] = tensor
            leaves = fresh_leaves([view[k] for k in present])

            def call() -> Tensor:
                for name, fed in zip(present, fed_copies(leaves)):
                    view[name] = fed
                return graph_forward(module, view, forward_fn)

            return fast_relevance(module, leaves, call, grad_output_fn, self.epsilon, self._rule_types())

        def post_dict(rels: tuple[Tensor, ...], *rest: Tensor) -> tuple[Tensor, ...]:
            return post(dict(zip(present, rels)), *rest)

        outputs = self._replay(module, tuple(data[k] for k in names), targets, getattr(data, "num_graphs", 1),
                               attribute, post_dict, post_inputs, (key, tuple(names), tuple(present), forward_fn))
        if outputs is None:  # redo eagerly, for the precise error
            self.attribute_graph(data, targets, keys=keys, forward_fn=forward_fn, caller=caller, checked=True)
            raise ValueError(f"{caller}: invalid labels or non-finite relevance in this batch.")
        return outputs

    # -- internals -------------------------------------------------------------------------------------------
    def _replay(self, module: nn.Module, tensors: tuple[Tensor, ...], targets: Tensor | None, batch_size: int,
                attribute: Callable, post: Callable, post_inputs: Sequence[Tensor], key: Hashable):
        """Capture (once per key and shapes) and replay ``attribute`` (the fast engine on static copies of
        ``tensors``) and ``post``; ``None`` when the batch's status (labels in range, relevance finite) says no."""
        _check_explainable(module)
        predicted = targets is None
        device = tensors[0].device
        static_targets = torch.zeros(batch_size, dtype=torch.long, device=device) if predicted else \
            targets.as_subclass(Tensor).to(device, non_blocking=True)
        count = len(tensors)

        def body(*static: Tensor) -> tuple[Tensor, ...]:
            """What is captured: the labels' validity and the relevance's finiteness come back as a status tensor
            instead of a synchronisation."""
            valid = []

            def grad_output_fn(logits: Tensor) -> Tensor:
                weights, ok = _output_relevance_nosync(logits, None if predicted else static[count])
                valid.append(ok)
                return weights

            with torch.enable_grad(), _attribution_state(module, tuple(module.modules()), keep_values=False):
                rels = attribute(static[:count], grad_output_fn)
            status = torch.stack([valid[0], *(torch.isfinite(rel).all() for rel in rels)])
            return (*post(rels, *static[count + 1:]), status)

        with _attributing_model(module), torch.autocast(device.type, enabled=False):
            *outputs, status = self._graphs(module, (key, predicted, self.epsilon),
                                            (*tensors, static_targets, *post_inputs), body)
            # The replay's outputs are the graph's static buffers, which the next replay (another thread's call)
            # overwrites: copied while the lock is held, then the status read (its synchronisation waits for them)
            outputs = [output.clone() for output in outputs]
            ok = bool(status.all())
        return tuple(outputs) if ok else None

    def _raise_as_the_whole_batch(self, module: nn.Module, forward: Callable[[], Tensor], batch_size: int,
                                  error: Exception) -> NoReturn:
        """Raise the error that a plain forward of the whole batch gives (``forward()``, see :meth:`_plain_outputs`),
        where the model's own forward failed on some of its samples (``error``): the message then names the batch the
        caller passed, the same whatever the coins; ``error`` itself if the whole batch goes through."""
        try:
            self._plain_outputs(module, forward, batch_size)
        except Exception as whole:
            raise whole from None
        raise error

    def _first_outputs(self, module: nn.Module, inputs: Tensor) -> int:
        """The number of outputs of a plain forward of the batch's first two samples (one in a batch of one, as an
        attribution of selected rows runs at least two): :meth:`_plain_outputs` of a tensor batch."""
        first = inputs[:2]
        return self._plain_outputs(module, lambda: module(first.clone()), first.shape[0])  # (a forward may change
        # its input in place)

    def _plain_outputs(self, module: nn.Module, forward: Callable[[], Tensor], batch_size: int) -> int:
        """The number of outputs of ``forward()`` (the model on ``batch_size`` samples), run in eval mode, without
        gradients, state preserved, its logits checked as an attribution's (:func:`_num_outputs`); first the refusal
        of a model LRP cannot explain (which may not run on few samples: BatchNorm without running statistics), as an
        attribution gives it."""
        modules = tuple(module.modules())
        _check_explainable(module, modules)
        with _attributing_model(module), torch.no_grad(), preserved_model_state(module, keep_values=False,
                                                                                 modules=modules), \
                parameter_writes_undone(modules):
            module.eval()
            run_eagerly(modules)
            logits = forward()
        return _num_outputs(logits, batch_size)

    def _say_once(self, key: Hashable, message: str, *, warn: bool, category: type[Warning] = RelevanceBackendWarning,
                  stacklevel: int = 4) -> None:
        if key in self._said:
            return
        self._said.add(key)
        if warn:
            warnings.warn(message, category, stacklevel=stacklevel)
        else:
            _log.info(message)

    def _attribute(self, module: nn.Module, inputs: tuple[Tensor, ...], call: Callable[..., Tensor],
                   grad_output_fn: Callable[[Tensor], Tensor], *, check_zero: bool = False) -> tuple[Tensor, ...]:
        """Relevance of every tensor in ``inputs`` for ``call(*leaves)``, under the model's lock and state guard;
        ``check_zero``: warn (once) when it is exactly zero everywhere (one synchronisation)."""
        use_fast = self.backend == "fast" or (self.backend == "auto" and self._fast_composite)
        if self.backend == "auto" and not use_fast:
            self._say_once(("composite", str(self.composite)), f"relevance: composite {self.composite!r} runs on the "
                           f"zennit backend (the fast engine computes {FAST_COMPOSITES}).", warn=False)
        device_type = inputs[0].device.type
        autocast = torch.autocast(device_type, dtype=self.dtype, enabled=self.dtype is not None)
        status = {"connected": True}  # whether the backward reached any leaf (see fast_relevance)

        def forward() -> Tensor:
            return call(*fed_copies(leaves))

        # (autocast inside the state guard: its records and checks run in the tensors' own dtypes, as torch.cat of
        # float16 buffers under CPU autocast to bfloat16 does not)
        with _attributing_model(module), torch.inference_mode(False), torch.enable_grad():
            modules = tuple(module.modules())  # one walk of the tree for the checks, the guard and the engine
            _check_explainable(module, modules)
            leaves = fresh_leaves(inputs)
            if use_fast:
                with _attribution_state(module, modules, keep_values=False), autocast:
                    try:
                        rels = fast_relevance(module, leaves, forward, grad_output_fn, self.epsilon,
                                              self._rule_types(), modules, self.__dict__.setdefault("_hints", {}),
                                              status)
                    except UnsupportedModel as error:
                        raise ExplanationError(f"this {type(module).__name__} cannot be explained with LRP: {error}.") \
                            from None
            else:
                with _attribution_state(module, modules, keep_values=True), autocast:
                    rels = zennit_relevance(module, leaves, forward, grad_output_fn, self.composite, self.epsilon,
                                            self._rule_types(), status)
            if not status["connected"]:
                self._say_once("unconnected", f"relevance: the output of this {type(module).__name__} does not depend "
                               "on its input through autograd (its forward detaches the input, runs under "
                               "torch.no_grad() or uses operations without gradients), so the relevance is all zero "
                               "and RelDrop's masks do not follow the model (all relevance ties: the dropout "
                               "transforms drop where alpha * U >= 1 - beta, none with the defaults; the erasing "
                               "transforms erase at random).", warn=True, category=UserWarning,
                               stacklevel=_caller_stacklevel())
            elif check_zero and not any(bool(rel.any()) for rel in rels):
                self._say_once("zero", f"relevance: the relevance of every sample of this batch is exactly zero "
                               f"(the Epsilon rule's epsilon={self.epsilon} absorbs the logits, as in an untrained "
                               "model whose outputs are all near zero, or the target logits are zero), so RelDrop's "
                               "masks do not follow the model for it (all relevance ties: the dropout transforms "
                               "drop where alpha * U >= 1 - beta, none with the defaults; the erasing transforms "
                               "erase at random). They do once the logits grow; a smaller epsilon starts earlier.",
                               warn=True, category=UserWarning, stacklevel=_caller_stacklevel())
            return tuple(_own_memory(r.detach(), leaf) for r, leaf in zip(rels, leaves))  # (not inference tensors)

    def _rule_types(self) -> RuleTypes:
        """The rule types, kept across calls (they cache each module class's rule); renewed when torch_geometric
        has been imported since."""
        types = self.__dict__.get("_types")  # absent in the state of an Attributor pickled before it existed
        if types is None or not types.current():
            types = self._types = rule_types()
        return types


@contextlib.contextmanager
def _attribution_state(module: nn.Module, modules: Sequence[nn.Module], *, keep_values: bool) -> Iterator[None]:
    """Eval mode, parameters not requiring gradients and no module backward hooks for the block (the caller's
    ``register_full_backward_hook`` / ``register_full_backward_pre_hook``: the backward computes relevance, not
    gradients), everything put back after it
    (:func:`preserved_model_state`; ``keep_values`` for backends that write into weights). ``modules``:
    ``module.modules()``, walked once by the caller."""
    with preserved_model_state(module, keep_values=keep_values, modules=modules), \
            inputs_only_carry_relevance(module, modules):
        set_eval(module, modules)
        run_eagerly(modules)
        for each in modules:  # the caller's backward hooks: for its training's gradients, not relevance (put back by
            if each._backward_hooks or each._backward_pre_hooks:  # preserved_model_state)
                each._backward_hooks.clear()
                each._backward_pre_hooks.clear()
        yield


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # reldrop_transforms/


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of a warning raised in :meth:`Attributor._say_once` that points at the caller's line: the
    first frame outside this package and the libraries that call it (torch's module call, torchvision's and PyG's
    ``Compose``), whichever public function or transform the caller used."""
    files = (getattr(sys.modules.get(name), "__file__", None) for name in ("torch", "torchvision", "torch_geometric"))
    skipped = [_PACKAGE + os.sep] + [os.path.dirname(os.path.abspath(file)) + os.sep for file in files if file]
    frame, level = sys._getframe(1), 2  # (the frame that calls _say_once is level 2 for warnings)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(tuple(skipped)):
        frame, level = frame.f_back, level + 1
    return level


def graph_forward(module: nn.Module, data, forward_fn: Callable | None) -> Tensor:
    """``forward_fn(module, data)``, or ``module(data)``: where that fails with a ``TypeError`` because the forward
    does not take one ``Data`` (``forward(self, pos, batch)``), the error says to pass ``forward_fn``."""
    if forward_fn is not None:
        return forward_fn(module, data)
    try:
        return module(data)
    except TypeError as error:
        try:
            signature = inspect.signature(module.forward)
        except (TypeError, ValueError):  # (no signature to read)
            raise error from None
        try:
            signature.bind(data)
        except TypeError:
            raise TypeError(
                f"without forward_fn the model is called as model(data), but {type(module).__name__}.forward"
                f"{signature} does not take one {type(data).__name__} ({error}). Pass forward_fn=lambda model, "
                "data: model(data.pos, data.batch) (or whatever its forward takes)."
            ) from error
        raise


def _graph_view(data, present: Sequence[str], tensors: Sequence[Tensor]):
    """A shallow copy of the PyG ``data`` for one forward: ``tensors`` under the keys ``present``, every other tensor
    as a copy (a forward may change its input in place, ``data.normal.sub_(...)``, ``data.batch += 0``, without
    touching the caller's; also those in its plain lists, tuples and dicts)."""
    view = copy.copy(data)  # (its own stores: the caller's keep their tensors)
    names = view.keys()  # (iterating a Data gives its items)
    for key in names:
        if key not in present:
            view[key] = copy_tensors(view[key])
    for key, tensor in zip(present, tensors):
        view[key] = tensor
    return view


def _graph_ptr(data) -> Tensor:
    """The node offsets of the clouds of the PyG ``data`` (``ptr``; ``[0, num_nodes]`` for a single ``Data``)."""
    ptr = getattr(data, "ptr", None)
    if isinstance(ptr, Tensor):
        return ptr.to(data.pos.device)
    return torch.tensor([0, data.pos.shape[0]], device=data.pos.device)


def _cloud_nodes(ptr: Tensor, clouds: Tensor, counts: Tensor) -> Tensor:
    """The node numbers of the clouds ``clouds`` (cloud by cloud, in that order) of a batch with offsets ``ptr``;
    ``counts``: their node counts."""
    starts = ptr.index_select(0, clouds)
    total = int(counts.sum())
    ends = counts.cumsum(0)
    return torch.arange(total, device=ptr.device) + torch.repeat_interleave(starts - (ends - counts), counts,
                                                                            output_size=total)


def _sub_batch(data, clouds: Tensor):
    """The clouds ``clouds`` of the collated PyG batch ``data`` as a batch of their own,
    ``type(data).from_data_list(data.index_select(clouds))``; ``None`` where that would not hold what ``data`` does
    for them: not a collated ``Batch`` of ``Data``, an attribute without collation bookkeeping (set after collation:
    ``index_select`` leaves it out), or a tensor whose size no longer matches its bookkeeping (resized since)."""
    slices = getattr(data, "_slice_dict", None)
    if not isinstance(slices, dict) or not callable(getattr(data, "index_select", None)) \
            or len(getattr(data, "stores", ())) != 1 or not isinstance(getattr(data, "ptr", None), Tensor):
        return None
    num_graphs = data.num_graphs
    try:
        for key, value in data.items():
            if key in ("batch", "ptr"):
                continue
            if key not in slices:
                return None
            if isinstance(value, Tensor):
                bounds = slices[key]
                dim = data.__cat_dim__(key, value)
                size = value.shape[0] if dim is None else value.shape[dim]
                if not isinstance(bounds, Tensor) or bounds.shape != (num_graphs + 1,) or int(bounds[-1]) != size:
                    return None
        return type(data).from_data_list(data.index_select(clouds))
    except (*MODEL_ERRORS, KeyError, AttributeError):  # (what PyG cannot separate: attributed whole instead)
        return None


def fresh_leaves(inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The leaves relevance is computed for: never the caller's tensor objects, nor their autograd graph (nor
    inference tensors). They share the caller's storage, which nothing writes: the model is fed
    :func:`fed_copies` of them."""
    return tuple((x.clone() if x.is_inference() else x.detach()).requires_grad_(True) for x in inputs)


def fed_copies(leaves: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """What a forward of the model gets: fresh copies of the leaves (one each per forward), which it may change in
    place (``x.sub_(mean)``, a pre-hook's ``clamp_``: autograd refuses that on a leaf or a view of one) without
    touching the caller's tensors or another forward's input."""
    return tuple(leaf.clone() for leaf in leaves)


def _own_memory(rel: Tensor, leaf: Tensor) -> Tensor:
    """``rel`` in memory of its own, laid out as ``leaf`` (as the input): a backward may hand back a broadcast
    view (Flat spreads one channel over every input channel), which in-place operations refuse, or a slice of a
    larger tensor (the zennit backend's graph inputs), which ``view`` refuses."""
    if rel.stride() == leaf.stride() and all(stride or size < 2 for stride, size in zip(rel.stride(), rel.shape)):
        return rel  # (a broadcast input, e.g. expanded over its channels, gets dense relevance all the same)
    return torch.empty_like(leaf, dtype=rel.dtype).copy_(rel)


def _num_outputs(logits, batch_size: int) -> int:
    """The number of outputs ``K`` of logits ``(batch_size, K)``; a ``ValueError`` for anything else."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != batch_size:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"the model should return logits of shape (B, K) = ({batch_size}, K) for a batch of {batch_size}, "
            f"but returned {shape}."
        )
    return logits.shape[1]


def _check_explainable(module: nn.Module, modules: Sequence[nn.Module] | None = None) -> None:
    problem = explanation_problem(module, modules)
    if problem is not None:
        raise ExplanationError(f"this {type(module).__name__} cannot be explained with LRP: {problem}.")


check_finite_ = check_finite  # the name inside methods whose keyword argument shadows it


def _output_relevance_nosync(logits: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor]:
    """Like :func:`output_relevance` without host synchronisation (capturable in a CUDA graph): the label range
    comes back as a 0-d bool tensor (out-of-range indices give an all-zero row meanwhile)."""
    if logits.ndim != 2:
        raise ValueError(f"the model should return logits of shape (B, K), but returned {tuple(logits.shape)}.")
    num_classes = logits.shape[1]
    valid = torch.ones((), dtype=torch.bool, device=logits.device)
    if targets is None:
        targets = logits.detach().argmax(1)
    if targets.ndim == 2:
        if targets.shape != logits.shape:
            raise ValueError(_soft_label_shape(targets, num_classes))
        return targets.to(logits.dtype, copy=True), valid
    classes = torch.arange(num_classes, device=logits.device)
    valid = ((targets >= 0) & (targets < num_classes)).all()
    return (targets[:, None] == classes[None, :]).to(logits.dtype), valid
