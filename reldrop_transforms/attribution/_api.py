"""``relevance()``: LRP of the current model for a batch, without touching the training state."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._composites import make_zennit_composite
from ._fast import FAST_COMPOSITES, UnsupportedModel, fast_relevance
from ._state import model_device, preserved_model_state, unwrap_model

__all__ = ["relevance", "relevance_graph", "BACKENDS", "RelevanceBackendWarning"]

BACKENDS = ("auto", "fast", "zennit")
_log = logging.getLogger("reldrop_transforms")
_SAID: set = set()


class RelevanceBackendWarning(UserWarning):
    """``backend="auto"`` fell back from the fast engine to zennit (said once per model class and reason)."""


def _say_once(key, message: str, *, warn: bool) -> None:
    if key in _SAID:
        return
    _SAID.add(key)
    if warn:
        warnings.warn(message, RelevanceBackendWarning, stacklevel=4)
    else:
        _log.info(message)


def check_not_in_worker(caller: str) -> None:
    """Attribution in a DataLoader worker would use a stale copy of the model (and no CUDA after fork)."""
    if torch.utils.data.get_worker_info() is not None:
        raise RuntimeError(
            f"{caller} runs inside a DataLoader worker process, which holds a stale copy of the model and cannot use "
            "CUDA after fork. Attribute in the main process: wrap the loader with "
            "reldrop_transforms.RelevanceLoader(loader, transform) (workers allowed), or use RelevanceCollate only "
            "with num_workers=0."
        )


def check_inputs(model: nn.Module, inputs: Tensor, *, caller: str = "relevance") -> torch.device | None:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{caller} expects the inputs as a torch.Tensor, but got {type(inputs).__name__}.")
    if not inputs.is_floating_point():
        raise TypeError(
            f"{caller} expects floating-point inputs, but got dtype {inputs.dtype}. Convert images first, "
            "e.g. with v2.ToDtype(torch.float32, scale=True)."
        )
    if inputs.ndim < 1:
        raise ValueError(f"{caller} expects a batch of shape (B, *), but got a scalar.")
    device = model_device(model)
    if device is not None and inputs.device != device:
        raise ValueError(
            f"{caller}: the inputs are on {inputs.device} but the model is on {device}. Move the batch to "
            f"{device} first, or wrap the loader with RelevanceLoader, which does so."
        )
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and inputs.dtype != dtype:
        raise ValueError(
            f"{caller}: the inputs have dtype {inputs.dtype} but the model's parameters have {dtype}. "
            "Convert one of them so that they match."
        )
    return device


def output_relevance(logits: Tensor, targets: Tensor | None, batch_size: int) -> Tensor:
    """The relevance put on the model's output: one-hot targets, soft targets as given, or the predicted class."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != batch_size:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"the model should return logits of shape (B, K) = ({batch_size}, K) for a batch of {batch_size}, "
            f"but returned {shape}."
        )
    num_classes = logits.shape[1]
    if targets is None:
        return nn.functional.one_hot(logits.detach().argmax(1), num_classes).to(logits.dtype)
    if targets.ndim == 1:
        if targets.shape[0] != batch_size:
            raise ValueError(f"labels of shape {tuple(targets.shape)} do not match a batch of {batch_size} samples.")
        if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
            raise TypeError(
                f"labels of shape (B,) should be integer class indices, but got dtype {targets.dtype}. "
                "Soft labels have shape (B, K)."
            )
        targets = targets.to(logits.device)
        outside = (targets < 0) | (targets >= num_classes)
        if bool(outside.any()):
            bad = targets[outside][:5].tolist()
            raise ValueError(
                f"labels should be class indices in [0, {num_classes - 1}] (the model has {num_classes} outputs), "
                f"but got {bad}."
            )
        return nn.functional.one_hot(targets.long(), num_classes).to(logits.dtype)
    if targets.ndim == 2:
        if targets.shape != logits.shape:
            raise ValueError(
                f"labels of shape {tuple(targets.shape)} do not match the model's output of shape "
                f"{tuple(logits.shape)}: soft labels should have shape (B, K) = {tuple(logits.shape)}."
            )
        if not targets.is_floating_point():
            targets = targets.float()
        return targets.to(device=logits.device, dtype=logits.dtype)
    raise ValueError(
        f"labels should be class indices of shape (B,) or soft labels of shape (B, K), "
        f"but got shape {tuple(targets.shape)}."
    )


def output_relevance_nosync(logits: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor]:
    """Like :func:`output_relevance` without host synchronisation (capturable in a CUDA graph).

    Shapes are checked in Python; the label range is returned as a 0-d bool tensor ``valid`` for the caller to
    check later (out-of-range indices give an all-zero row meanwhile).
    """
    if logits.ndim != 2:
        raise ValueError(f"the model should return logits of shape (B, K), but returned {tuple(logits.shape)}.")
    num_classes = logits.shape[1]
    valid = torch.ones((), dtype=torch.bool, device=logits.device)
    if targets is None:
        targets = logits.detach().argmax(1)
    if targets.ndim == 2:
        if targets.shape != logits.shape:
            raise ValueError(f"soft labels should have shape {tuple(logits.shape)}, but got {tuple(targets.shape)}.")
        return targets.to(logits.dtype), valid
    classes = torch.arange(num_classes, device=logits.device)
    valid = ((targets >= 0) & (targets < num_classes)).all()
    return (targets[:, None] == classes[None, :]).to(logits.dtype), valid


def check_finite(rel: Tensor, caller: str = "relevance", index: Tensor | None = None) -> None:
    """Raise a ValueError naming the samples whose relevance is NaN or infinite (one synchronisation).

    ``index`` maps the rows of ``rel`` to positions in the caller's batch (when only some samples were attributed).
    """
    flat = rel.reshape(rel.shape[0], -1)
    finite = torch.isfinite(flat)
    if bool(finite.all()):
        return
    bad = (~finite).any(1).nonzero().flatten()
    if index is not None:
        bad = index[bad].unique()
    n_nan = int(torch.isnan(flat).sum())
    n_inf = int(torch.isinf(flat).sum())
    raise ValueError(
        f"{caller}: the relevance is not finite ({n_nan} NaN and {n_inf} infinite values) for sample(s) "
        f"{bad[:10].tolist()}{' ...' if bad.numel() > 10 else ''} of the batch. Check the model's outputs for these "
        "inputs, and use epsilon > 0."
    )


def attribute(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    call: Callable[..., Tensor],
    grad_output_fn: Callable[[Tensor], Tensor],
    *,
    composite,
    epsilon: float,
    backend: str,
    dtype: torch.dtype | None,
) -> tuple[Tensor, ...]:
    """The engine room of :func:`relevance`: relevance of every tensor in ``inputs`` for ``call(*leaves)``.

    ``model`` is the unwrapped module that ``call`` runs; ``grad_output_fn(logits)`` returns the output relevance
    (and validates the logits). Runs the fast engine or zennit inside :func:`preserved_model_state`.
    """
    use_fast = backend == "fast" or (backend == "auto" and isinstance(composite, str) and composite in FAST_COMPOSITES)
    if backend == "fast" and not (isinstance(composite, str) and composite in FAST_COMPOSITES):
        raise ValueError(
            f"backend='fast' computes the composites {FAST_COMPOSITES}, but got composite={composite!r}; "
            "use backend='zennit' or 'auto' for other composites."
        )
    if backend == "auto" and not use_fast:
        _say_once(("composite", str(composite)), f"relevance: composite {composite!r} runs on the zennit backend "
                  f"(the fast engine computes {FAST_COMPOSITES}).", warn=False)
    autocast = torch.autocast(inputs[0].device.type, dtype=dtype, enabled=dtype is not None)
    rels = None
    with torch.inference_mode(False), torch.enable_grad(), autocast:
        # Fresh leaves: never the caller's tensor objects, never their autograd graph (nor inference tensors).
        leaves = tuple((x.clone() if x.is_inference() else x.detach()).requires_grad_(True) for x in inputs)
        if use_fast:
            with preserved_model_state(model, keep_values=False):  # the fast engine writes no tensor
                model.eval()
                try:
                    rels = fast_relevance(model, leaves, lambda: call(*leaves), grad_output_fn, epsilon)
                except UnsupportedModel as error:
                    if backend == "fast":
                        raise ValueError(f"backend='fast' does not support this {type(model).__name__}: {error}.") from None
                    _say_once(("model", type(model), str(error)), f"relevance: the fast engine does not support this "
                              f"{type(model).__name__} ({error}); using the zennit backend (slower, same rules).",
                              warn=True)
        if rels is None:
            with preserved_model_state(model, keep_values=True):
                model.eval()
                zennit_composite = make_zennit_composite(composite, model, leaves[0], epsilon)
                with zennit_composite.context(model):
                    logits = call(*leaves)
                    rels = torch.autograd.grad(logits, leaves, grad_output_fn(logits), allow_unused=True)
            # an input the output does not depend on has zero relevance
            rels = tuple(torch.zeros_like(x) if r is None else r for x, r in zip(leaves, rels))
    return tuple(r.detach() for r in rels)


def relevance(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    composite="epsilon_flat",
    epsilon: float = 1e-3,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    check_finite_values: bool = True,
) -> Tensor:
    """LRP relevance of ``model`` for a batch, computed in eval mode without touching the training state.

    The model is unwrapped from DDP/DataParallel/``torch.compile``, put in eval mode, attributed, and restored:
    the same parameter objects with the same values, buffers, ``.grad``, ``requires_grad``, every submodule's
    train/eval flag, and no hooks left, also when the model raises. Gradients are enabled inside even under
    ``torch.no_grad()`` or ``torch.inference_mode()``; autocast is disabled (float32 models attribute in float32).

    Args:
        model: A classifier returning logits ``(B, K)``.
        inputs: The batch, on the model's device.
        targets: Class indices ``(B,)``, one-hot or soft labels ``(B, K)`` (the output relevance as given), or
            ``None`` for the predicted class.
        composite: ``"epsilon_flat"`` (the paper's: Flat first layer, Epsilon elsewhere, BatchNorm merged, Pass
            on activations, Norm on average pooling and residual sums), a zennit registry name such as
            ``"epsilon_plus_flat"`` or ``"epsilon_gamma_box"``, or a zennit ``Composite``.
        epsilon: The Epsilon rule's stabiliser (the paper found 1e-3 best).
        backend: ``"fast"`` (one eval forward and one backward, exact for ``"epsilon_flat"`` on supported models:
            see :mod:`reldrop_transforms.attribution._fast`), ``"zennit"`` (the reference implementation), or
            ``"auto"``: fast whenever the composite and the model are supported, else zennit (the fallback is said
            once, as a :class:`RelevanceBackendWarning` when the composite was fast-capable).
        dtype: Run the attribution under autocast in this dtype (e.g. ``torch.bfloat16``); ``None`` (default)
            disables autocast so that it runs in the model's own precision.
        check_finite_values: Raise a ``ValueError`` naming the samples whose relevance is NaN or infinite
            (costs one host-device synchronisation).

    Shape:
        - inputs: (B, *), floating.
        - targets: (B,) integer, or (B, K) floating.
        - output: same as ``inputs``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> relevance(model, torch.randn(2, 3, 2, 2), torch.tensor([0, 2])).shape
        torch.Size([2, 3, 2, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model should be a torch.nn.Module, but got {type(model).__name__}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend should be one of {BACKENDS}, but got {backend!r} instead.")
    check_not_in_worker("relevance")
    model = unwrap_model(model)
    check_inputs(model, inputs)
    if targets is not None and not isinstance(targets, Tensor):
        raise TypeError(f"targets should be a torch.Tensor or None, but got {type(targets).__name__}.")
    batch_size = inputs.shape[0]
    if targets is not None and targets.shape[:1] != inputs.shape[:1]:
        raise ValueError(f"labels of shape {tuple(targets.shape)} do not match a batch of {batch_size} samples.")
    if inputs.numel() == 0:
        return torch.zeros_like(inputs)

    def grad_output_fn(logits: Tensor) -> Tensor:
        return output_relevance(logits, targets, batch_size)

    (rel,) = attribute(
        model, (inputs,), lambda x: model(x), grad_output_fn,
        composite=composite, epsilon=epsilon, backend=backend, dtype=dtype,
    )
    rel = rel.detach()
    if check_finite_values:
        check_finite(rel)
    return rel


def relevance_graph(
    model: nn.Module,
    data,
    targets: Tensor | None = None,
    *,
    keys: tuple[str, ...] = ("pos", "x"),
    forward_fn: Callable | None = None,
    composite="epsilon_flat",
    epsilon: float = 1e-3,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    check_finite_values: bool = True,
) -> dict[str, Tensor]:
    """LRP relevance of a PyTorch Geometric ``Data``/``Batch`` with respect to its node tensors.

    The same engine, rules and state guarantees as :func:`relevance`; the inputs are the node attributes named
    in ``keys`` that the data has (``pos`` is required, ``x`` is used where present), each replaced by a leaf in a
    shallow copy of ``data`` that is passed to ``forward_fn(model, data)`` (default ``model(data)``). ``model`` is
    unwrapped from DDP/``torch.compile`` first, and ``forward_fn`` receives the unwrapped module.

    Args:
        model: A point-cloud classifier returning logits ``(num_graphs, K)``.
        data: A ``torch_geometric.data.Batch`` (or a single ``Data``: one cloud) on the model's device.
        targets: Class indices ``(num_graphs,)``, soft labels ``(num_graphs, K)``, or ``None`` (predicted class).
        keys: Node attributes to attribute.
        forward_fn: ``forward_fn(model, data) -> logits`` for models with other call signatures.

    Returns:
        ``{key: relevance}`` with each relevance of the attribute's shape, for the keys present in ``data``.

    Example:
        >>> rel = relevance_graph(model, batch, batch.y)
        >>> per_point = rel["pos"].sum(-1) + rel["x"].sum(-1)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model should be a torch.nn.Module, but got {type(model).__name__}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend should be one of {BACKENDS}, but got {backend!r} instead.")
    check_not_in_worker("relevance_graph")
    module = unwrap_model(model)
    if getattr(data, "pos", None) is None:
        raise ValueError(
            f"relevance_graph expects point clouds with node positions `pos`, but the {type(data).__name__} has none."
        )
    present = [key for key in keys if isinstance(getattr(data, key, None), Tensor)]
    num_nodes = data.pos.shape[0]
    for key in present:
        check_inputs(module, data[key], caller=f"relevance_graph ({key})")
        if data[key].shape[0] != num_nodes:
            raise ValueError(
                f"relevance_graph: `{key}` has {data[key].shape[0]} rows but `pos` has {num_nodes} nodes."
            )
    num_graphs = getattr(data, "num_graphs", 1)
    if targets is not None and (not isinstance(targets, Tensor) or targets.shape[:1] != (num_graphs,)):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"labels of shape {shape} do not match a batch of {num_graphs} clouds.")
    if num_nodes == 0:
        return {key: torch.zeros_like(data[key]) for key in present}

    def call(*leaves: Tensor) -> Tensor:
        view = copy.copy(data)
        for key, leaf in zip(present, leaves):
            view[key] = leaf
        return module(view) if forward_fn is None else forward_fn(module, view)

    def grad_output_fn(logits: Tensor) -> Tensor:
        return output_relevance(logits, targets, num_graphs)

    rels = attribute(
        module, tuple(data[key] for key in present), call, grad_output_fn,
        composite=composite, epsilon=epsilon, backend=backend, dtype=dtype,
    )
    if check_finite_values:
        batch = getattr(data, "batch", None)
        for rel in rels:
            check_finite(rel, "relevance_graph", batch)
    return dict(zip(present, rels))
