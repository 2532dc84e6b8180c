"""The fast exact LRP engine: zennit's rules (see :mod:`._rules`) in one eval forward and one backward.

*Relevance form* (METHOD.md section 3b). zennit turns the gradient slot into relevance at every module with a
rule and lets every other operation pass relevance on by its ordinary backward; each rule re-runs the module's
forward in the backward. Here the backward of the forward that already ran does the same work, with tiny
autograd points around each rule module instead of a re-run:

- at a rule module's output ``z`` (Epsilon, Norm): ``R -> R / stab(z)`` (a pre-hook on the node that made ``z``,
  removed where a BatchNorm takes the rule over; an in-place Function where ``z`` is a view changed in place); the
  module's ordinary backward in between (conv/linear transpose, average-pool transpose, aggregation scatter); at the
  module's input ``x``, on that edge only: ``c -> c * x``;
- BatchNorm merged: the output point moves to the BatchNorm's output (the backward then runs through the
  BatchNorm's scale, which is what merging the weights means; no weight is modified);
- Flat at the first linear layer: relevance spread uniformly over each output's receptive field, straight to
  the layer's input (one transposed convolution of ones);
- Pass on activations (and unmerged BatchNorm): relevance handed to the input unchanged;
- Norm at a sum of two relevance-carrying tensors: a point that splits ``R`` as ``a / stab(a + b)`` and
  ``b / stab(a + b)``, seen by a ``TorchFunctionMode`` (so functional residual adds are found in any model);
- anything else: the ordinary backward.

Every decision is taken on the forward actually run, at every call: nothing is cached between calls (the caller
may keep the :class:`._rules.RuleTypes`, which only caches each module class's rule). The points read the forward's
own values; an in-place operation that would change a value a point still needs (other than a ReLU-like clamp,
whose gradient is zero wherever it changes a value) makes the point keep a copy first.

Memory is time on a CPU (a fresh page costs more than a pass over it), so the pass holds no more than the gradient
pass: a merged layer's output is freed once its BatchNorm has read it (taken back if another reader comes), every
point frees its value after its backward, and a chain z -> ReLU [-> max pooling, reshapes] -> rule layer in which
each step alone reads the previous one is fused (:meth:`_Engine._settle_chains`): z is not kept at all (after a max
pooling, the rule is applied on the pooled values; through ReLU6 and the like, which are 0 wherever z <= 0, it is
fused keeping z). The layer whose output an ``nn.ReLU`` alone
reads divides by the ReLU output instead: the same relevance wherever every reader of the ReLU output hands it
relevance proportional to it (checked after the forward; otherwise the pass is rerun without this, and a caller that
keeps ``hints`` is not made to try again). Activations built with ``inplace=True``
run out of place, as zennit runs them on a clone of their input; only such an ``nn.ReLU`` after another child of a
running ``nn.Sequential``, whose input nothing else can read, runs in place (:meth:`_Engine._relu_pre_hook`). The
engine's own operations inside the forward run under ``DisableTorchFunction``, unseen by the mode.
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._rules import (
    ADD_NAMES, COPY_NAMES, NO_READ_NAMES, NORM_STABILIZER, RuleTypes, computed_weight, first_linear, has_tensor,
    keyword_input_problem, relevance_add, rule_types, stabilize, transformed_input_problem,
)
from ._state import (WRITES_OTHERS, ParameterWrites, changes_first_argument, operation_name, restore_all,
                     written_tensors)

__all__ = ["FAST_COMPOSITES", "UnsupportedModel", "fast_relevance"]

FAST_COMPOSITES = ("epsilon_flat",)

# In-place operations whose gradient is zero wherever they change a value: a division point that reads the
# changed value computes the same relevance (its incoming relevance is zero there).
_CLAMPS = frozenset({"relu_", "hardtanh_", "threshold_", "clamp_", "clamp_min_", "clamp_max_", "relu6_"})
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_INPUT_GRAD = {nn.Conv1d: nn.grad.conv1d_input, nn.Conv2d: nn.grad.conv2d_input, nn.Conv3d: nn.grad.conv3d_input}
_CONV_FORWARD = {nn.Conv1d: nn.functional.conv1d, nn.Conv2d: nn.functional.conv2d, nn.Conv3d: nn.functional.conv3d}


_plain = torch._C.DisableTorchFunction  # the engine's own operations inside the forward: unseen by _Forward
_thread = threading.get_ident


def _own_thread(hook: Callable) -> Callable:
    """An engine hook that acts on its pass's own thread only: the hooks live on the caller's modules for the pass,
    and a forward of them in another thread (inference beside the attribution) runs them too (the
    ``TorchFunctionMode`` is per thread already)."""

    @functools.wraps(hook)
    def own_thread_only(self: _Engine, *args):
        return hook(self, *args) if _thread() == self.thread else None

    return own_thread_only
_global_forward_hooks = nn.modules.module._global_forward_hooks  # (register_module_forward_hook's: a dict)


def _builtin(module: nn.Module) -> bool:
    """A torch activation or BatchNorm class itself (its forward is one functional call: nothing inside it needs
    the engine's attention, and its point cuts its graph off anyway)."""
    return type(module).__module__.startswith("torch.nn.modules.")


class UnsupportedModel(Exception):
    """The engine cannot apply the rules to this forward (the message says why)."""


class _Misjudged(Exception):
    """A ReLU output stood in for its layer's output where it may not (see :meth:`_Engine._verify`): run again
    without that."""


class _HiddenReaders(Exception):
    """The autograd graph has readers of a point's value that the engine did not see (a TorchScript function, an
    extension's operation: see :meth:`_Engine.hidden_readers`): run again without what assumed it saw them all."""


class _ViewsChanged(Exception):
    """Rule layers whose output is a view, changed in place during the forward (see :func:`_output_prehook`): run
    again with the in-place Function at these layers' outputs."""

    def __init__(self, modules: frozenset) -> None:
        super().__init__()
        self.modules = modules


class _Point:
    """A division point: the tensor ``z`` whose stabilised values divide the relevance in the backward."""

    __slots__ = ("kind", "module", "inp", "epsilon", "active", "z", "result", "uses", "scale", "fused", "good",
                 "bad", "parents", "substitute", "shares", "in_place", "options", "origin", "handle", "alias",
                 "version", "topped", "node", "engine_edges", "operands", "merged")

    def __init__(self, kind: str, z: Tensor, epsilon: float, module: nn.Module | None = None,
                 inp: Tensor | None = None) -> None:
        self.kind = kind  # "epsilon" | "norm" | "flat" | "hooked" (see _rule_hook) | "pass" | "through" | "select"
        self.z = z  # detached; replaced by a copy before an in-place change (see _Forward); None while merged
        self.epsilon = epsilon
        self.module = module  # linear module (epsilon, flat)
        self.inp = inp  # the Flat layer's input
        self.options: tuple = ((), {})  # the Flat layer's other arguments (ConvTranspose's output_size)
        self.origin: nn.Module | None = None  # the module whose forward hook made the point (rule layer, BatchNorm)
        self.active = True  # False once a following BatchNorm took the rule over
        self.merged = False  # a BatchNorm's point that took a linear layer's rule over (no second one merges into it)
        self.result: weakref.ref | None = None  # the tensor the point returned (weakly: see _Engine.points)
        self.uses = 0  # operations that read ``result`` (a BatchNorm merges only into a layer it alone reads)
        self.scale: Tensor | None = None  # a merged BatchNorm's eval-mode Jacobian (per channel)
        self.fused: Tensor | None = None  # the ReLU output x of a fused chain (see _Engine._settle_chains)
        self.topped = False  # a fused chain through an nn.ReLU: its top multiplies (see _Engine._settle_chains)
        # ReLU outputs and what derives from them (kinds "pass", "through", "select"; see _Engine._relu_hook):
        self.good = 0  # reads whose relevance is proportional to the value read (rule layer, Norm sum, selection)
        self.bad = False  # a derived tensor has another reader
        self.parents: tuple[_Point, ...] = ()  # a derived point's sources
        self.substitute = False  # z is the ReLU output standing in for this layer's output (see _relu_hook)
        self.shares: _Point | None = None  # the layer whose z lives in this ReLU output's storage
        self.in_place = False  # the ReLU ran in place (its own backward, which saved its output, stands for Pass)
        self.handle = None  # the node pre-hook at a rule layer's output (see _output_prehook)
        self.alias: Tensor | None = None  # a rule layer's output that is a view (detached: its version counter)
        self.version = 0  # ... and its version when the layer returned it
        self.node: tuple | None = None  # (grad_fn, output_nr) of ``result`` when registered: its graph readers' edge
        self.engine_edges = 0  # edges into ``node`` that the engine's own operations made (not readers)
        self.operands: list | None = None  # a Norm sum's operand values and their versions (see _SumPoint)


class _RulePoint(torch.autograd.Function):
    """A rule at a module's output ``out``, applied in place (``mark_dirty``: in-place operations after it stay in
    place), by ``point.kind`` in the backward:

    - ``"epsilon"``/``"norm"``: ``R -> R / stab(z)`` on to ``out``'s own graph (the module's ordinary backward),
      or, where a forward hook of the caller's changed the module's output, to the output ``inp`` the module itself
      returned (as zennit: its rule treats the hooked output as the module's, and re-runs the module without it);
      unchanged once inactive (a following BatchNorm took the rule over); at a merged BatchNorm, times its
      per-channel eval-mode scale straight to its input ``inp`` (``out`` detached: the same derivative, without
      autograd's general BatchNorm backward);
    - ``"flat"``: Flat straight to the first layer's input ``flat_inp`` (``out`` detached: the layer's graph cut);
    - ``"pass"``: relevance straight to the module's input ``inp`` (``out`` detached).
    """

    @staticmethod
    def forward(ctx, out: Tensor, inp: Tensor | None, flat_inp: Tensor | None, point: _Point) -> Tensor:
        ctx.point = point
        ctx.routed = inp is not None  # the relevance goes to inp (out detached)
        ctx.set_materialize_grads(False)  # a branch cut off by Flat sends None: keep it None, compute nothing
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        point: _Point = ctx.point
        if grad is None:
            return None, None, None, None
        if not point.active:
            return (None, grad, None, None) if ctx.routed else (grad, None, None, None)
        if point.kind == "pass":
            return None, grad, None, None
        if point.kind == "flat":
            return None, None, _flat_input_relevance(point.module, point.inp, grad, point.options), None
        share = _divided(point, grad)
        return (None, share, None, None) if ctx.routed else (share, None, None, None)


def _divided(point: _Point, grad: Tensor) -> Tensor:
    """Epsilon / Norm at ``point``: ``grad / stab(z)`` (times a merged BatchNorm's scale); frees the point's values."""
    if point.topped:  # z -> nn.ReLU [-> ...] -> rule layer: that layer's input point divided (see _settle_chains)
        point.z = None
        return grad if point.scale is None else grad * point.scale
    if point.fused is not None:  # z -> ReLU -> rule layer: grad is c, not c * x (see _Engine._settle_chains)
        x, point.fused = point.fused, None
        if point.z is None:  # a ReLU: x = z wherever x != 0, so stab(z) = x + eps there (elsewhere c * x = 0)
            share = torch.add(x, point.epsilon)
        else:  # x = f(z) = 0 wherever z <= 0 (ReLU6, ...): stab(z) = relu(z) + eps wherever x != 0
            share = torch.clamp_min(point.z, 0).add_(point.epsilon)
        # c * (x / stab): c / stab first would be ~1/scale^2 of inputs scaled by `scale` (0 below the dtype's
        # range: float32 inputs x 1e25 gave all-zero relevance); one buffer (a fresh one costs more than a pass)
        torch.div(x, share, out=share).mul_(grad)
    else:
        share = divide_by_stabilized(grad, point.z, point.epsilon)
    point.z = None  # each point runs once: its value is freed here, as autograd frees what it saved
    if point.scale is not None:  # merged BatchNorm: its backward in eval mode is this per-channel scale
        share.mul_(point.scale)
    return share


def _output_prehook(point: _Point, index: int, grad_outputs: tuple) -> tuple | None:
    """The point at a rule layer's own output ``z``, as a pre-hook of the autograd node that made it (cheaper than a
    Function, and removed when a BatchNorm takes the rule over): the relevance arriving at the value the layer
    returned, also if it is changed in place later (the node stays in the graph behind the change), after the tensor
    hooks a forward of the caller's put on ``z`` (those run first, as before zennit's rule). An in-place change of a
    ``z`` that is a view bypasses the view's node: the engine checks such a ``z``'s version after the forward and runs
    again with the in-place Function there (:class:`_ViewsChanged`)."""
    grad = grad_outputs[index]
    if not point.active or grad is None:
        return None
    return (*grad_outputs[:index], _divided(point, grad), *grad_outputs[index + 1:])


class _InputPoint(torch.autograd.Function):
    """Identity in the forward (a view); backward ``c -> c * x``: the reducer of Epsilon and Norm. Where ``link.fused``
    (see :meth:`_Engine._settle_chains`): ``c * (x / (x + link.epsilon))`` for a chain through an ``nn.ReLU``, the
    whole rule of the layer below, or ``c`` unchanged where that layer's point multiplies instead."""

    @staticmethod
    def forward(ctx, x: Tensor, link: _Link | None) -> Tensor:
        ctx.save_for_backward(x)
        ctx.link = link
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        link = ctx.link
        if link is not None and link.fused:
            if link.epsilon is None:
                return grad, None
            (x,) = ctx.saved_tensors
            share = torch.add(x, link.epsilon)  # (c * (x / stab): see _divided)
            return torch.div(x, share, out=share).mul_(grad), None
        (x,) = ctx.saved_tensors
        return grad * x, None


class _Link:
    """A rule layer's input point whose input comes from a ReLU's output: the chain may be fused."""

    __slots__ = ("epsilon", "fused")

    def __init__(self) -> None:
        self.fused = False
        self.epsilon: float | None = None  # the layer below's stabiliser, where this point applies its rule


class _SumPoint(torch.autograd.Function):
    """Norm at ``s = a + b``: ``R_a = a * R / stab(s)``, ``R_b = b * R / stab(s)`` (summed over broadcast
    dimensions). ``a_value``: a copy of ``a``'s value when the sum is taken in place (``None``: ``a`` itself; not
    passed twice, which would make a second graph edge into ``a``, see :meth:`_Engine.hidden_readers`).

    The operands' values are kept on the point (``operands``: value, version), not saved for backward: an operand
    changed in place later (``y = z + b; b.mul_(2)``; ``z[:, 1:] = z[:, 1:] + b[:, 1:]``; ``z += z``, whose second
    operand the engine's own copy changes) gets a copy of its value kept first (:meth:`_Engine.keep_before_change`),
    where autograd's saved tensors would refuse the backward; a change the engine did not see raises as autograd
    does."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, a_value: Tensor | None, point: _Point) -> Tensor:
        ctx.point = point
        ctx.shapes = (a.shape, b.shape)
        values = (a.detach() if a_value is None else a_value, b.detach())
        point.operands = [[value, value._version] for value in values]
        total = a + b
        point.z = total.detach()
        return total

    @staticmethod
    def backward(ctx, grad):
        point: _Point = ctx.point
        if any(value._version != version for value, version in point.operands):
            raise RuntimeError("one of the variables needed for gradient computation has been modified by an inplace "
                               "operation: an operand of a sum, changed in place where the relevance engine could not "
                               "see it (e.g. inside a TorchScript function)")
        (a, _), (b, _) = point.operands
        share = divide_by_stabilized(grad, point.z, NORM_STABILIZER)
        point.z = point.operands = None
        return (share * a).sum_to_size(ctx.shapes[0]), (share * b).sum_to_size(ctx.shapes[1]), None, None


def _batchnorm_scale(module: nn.Module, out: Tensor, scales: dict | None = None) -> Tensor:
    """d out / d in of a BatchNorm in eval mode: ``weight / sqrt(running_var + eps)`` per channel (dim 1), from
    ``scales`` (:func:`_batchnorm_scales`) where it holds the module's in ``out``'s dtype. (During attribution nothing
    here requires grad: see :func:`fast_relevance`.)"""
    scale = scales.get(module) if scales else None
    if scale is None or scale.dtype != out.dtype or scale.device != out.device:
        var, weight = module.running_var, module.weight
        scale = torch.rsqrt((var if var.dtype == out.dtype else var.to(out.dtype)) + module.eps)
        if weight is not None:
            scale.mul_(weight if weight.dtype == out.dtype else weight.to(out.dtype))
    return scale.view((1, -1) + (1,) * (out.ndim - 2))


def _batchnorm_scales(modules: Sequence[nn.Module]) -> dict[nn.Module, Tensor]:
    """The scales of :func:`_batchnorm_scale` for every BatchNorm among ``modules`` whose running variance and weight
    share a dtype and device, in three list operations before the forward (zennit, too, merges the parameters before
    its forward), the same numbers: one list operation costs about what one tensor's does, and a small operation
    inside the forward, between large kernels, several times more."""
    modules = [m for m in modules if _scalable(m)]
    if not modules:
        return {}
    with torch.no_grad():
        scales = torch._foreach_add([m.running_var for m in modules], [float(m.eps) for m in modules])
        torch._foreach_rsqrt_(scales)
        weighted = [(scale, m.weight) for scale, m in zip(scales, modules) if m.weight is not None]
        if weighted:
            torch._foreach_mul_([scale for scale, _ in weighted], [weight for _, weight in weighted])
    return dict(zip(modules, scales))


def _scalable(module: nn.Module) -> bool:
    """Whether :func:`_batchnorm_scales` takes ``module`` (a plain running variance, a number eps, a weight like it)."""
    var, weight = getattr(module, "running_var", None), getattr(module, "weight", None)
    eps = getattr(module, "eps", None)
    return type(var) is Tensor and var.layout == torch.strided and isinstance(eps, (float, int)) and (
        weight is None or isinstance(weight, Tensor) and weight.dtype == var.dtype and weight.device == var.device
        and weight.shape == var.shape)


def divide_by_stabilized(grad: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """``grad / stabilize(z, epsilon)``, bitwise, in one buffer and in-place passes (the hot path of the backward).

    ``(z >= 0) * 2 eps - eps`` is exactly ``+-eps`` (doubling is exact, and so is ``2 eps - eps``), so adding ``z``
    gives ``z + eps * sign(z)`` with ``sign(0) = +1``, as :func:`stabilize`; written into a float buffer, it avoids
    ``torch.where`` on broadcast scalars (9x slower on CPU).
    """
    denominator = torch.empty_like(z)
    torch.ge(z, 0, out=denominator)
    denominator.mul_(2 * epsilon).sub_(epsilon).add_(z)
    if grad.dtype != denominator.dtype or grad.shape != denominator.shape:  # autocast, broadcasting
        return grad / denominator
    return torch.div(grad, denominator, out=denominator)


def _plain_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or ``torch_geometric.nn.Linear`` itself (``F.linear`` with its own weight), not a subclass."""
    cls = type(module)
    return cls is nn.Linear or (cls.__name__ == "Linear" and cls.__module__.startswith("torch_geometric.nn."))


def _flat_input_relevance(module: nn.Module, inp: Tensor, rel: Tensor, options: tuple = ((), {})) -> Tensor:
    """Flat rule: spread ``rel`` uniformly over each output's receptive field (zennit's ``Flat``).

    With all-one weights every input channel receives the same spread, so (without groups) the work is done on
    one input and one output channel: the counts are ``in_channels`` times a one-channel convolution of ones
    (one sample: they depend on the shape only), and the relevance summed over output channels is spread by that
    one-channel convolution's transpose. A linear layer's counts are its ``in_features``.
    """
    own_weight = "weight" in module._parameters  # (not computed: a parametrization, weight_norm's hook)
    if type(module) in _CONV and own_weight and module.groups == 1 and not isinstance(module.padding, str) \
            and module.padding_mode == "zeros" and inp.ndim == module.weight.ndim:  # (batched: unbatched below)
        ones = inp.new_ones((1, 1, *inp.shape[2:]))
        window = inp.new_ones((1, 1, *module.weight.shape[2:]))
        counts = module._conv_forward(ones, window, None) * module.weight.shape[1]
        share = rel.sum(1, keepdim=True) / stabilize(counts, NORM_STABILIZER)
        kernel, dilation = module.weight.shape[2:], module.dilation
        full = [d * (k - 1) - p for k, d, p in zip(kernel, dilation, module.padding)]
        if all(stride == 1 for stride in module.stride) and all(f >= 0 for f in full):
            # stride 1: the transpose of a correlation with a symmetric (all-one) kernel is a correlation with
            # "full" padding, which CPU backends run far faster than a one-channel transposed convolution
            spread = _CONV_FORWARD[type(module)](share, window, None, 1, tuple(full), dilation)
        else:
            # (not an autocast operation: the window in the relevance's dtype, float16 under autocast)
            spread = _CONV_INPUT_GRAD[type(module)]((inp.shape[0], 1, *inp.shape[2:]), window.to(share.dtype), share,
                                                    module.stride, module.padding, dilation)
        return spread.expand_as(inp)
    weight = module._parameters.get("weight")
    if _plain_linear(module) and isinstance(weight, Tensor) and weight.ndim == 2:
        # nn.Linear, torch_geometric.nn.Linear: every output sees every input
        counts = torch.full((), module.weight.shape[1], dtype=rel.dtype, device=rel.device)
        return (rel.sum(-1, keepdim=True) / stabilize(counts, NORM_STABILIZER)).expand_as(inp)
    # anything else (grouped or transposed convolutions, string or circular padding, a subclass with a forward of
    # its own): the module with all-one parameters (its own, as zennit sets them) and no bias on an all-one input,
    # differentiated, as zennit computes it (``forward`` itself, so that no hook runs); a layer whose weight is
    # computed, through a stand-in with an all-one weight of its own (see _all_one_stand_in)
    from torch.nn.utils.stateless import _reparametrize_module

    stand_in = _all_one_stand_in(module, inp) if computed_weight(module) or computed_weight(module, "bias") else None
    target = module if stand_in is None else stand_in
    params = {name: (torch.zeros_like(p) if name == "bias" else torch.ones_like(p))
              for name, p in target.named_parameters(recurse=False)}
    with torch.enable_grad(), _reparametrize_module(target, params):
        ones = torch.ones_like(inp).requires_grad_(True)
        counts = target.forward(ones, *options[0], **options[1])
        (spread,) = torch.autograd.grad(counts, ones, rel / stabilize(counts.detach(), NORM_STABILIZER))
    return spread


_LINEAR_BASES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d)


def _all_one_stand_in(module: nn.Module, inp: Tensor) -> nn.Module | None:
    """For Flat on a ``Linear``/``Conv``/``ConvTranspose`` whose weight (or bias) is computed (a parametrization
    such as ``parametrizations.weight_norm``, or a ``weight_norm`` hook): the same layer (its class's own forward, strides,
    padding, groups) with an all-one weight Parameter of the computed weight's shape and no bias, sharing nothing
    that the layer's forward would change. ``None`` for a subclass with a forward of its own (as zennit then)."""
    base = next((cls for cls in _LINEAR_BASES if isinstance(module, cls) and type(module).forward is cls.forward),
                None)
    if base is None:
        return None
    with torch.no_grad():
        shape = module.weight.shape  # (a parametrization computes it: in eval mode, nothing is updated)
    stand_in = base.__new__(base)
    state = dict(module.__dict__)
    state.pop("weight", None)  # (a weight_norm hook's plain attribute)
    state.pop("bias", None)  # (a bias held as a plain tensor attribute)
    state["_parameters"] = {"weight": nn.Parameter(inp.new_ones(shape), requires_grad=False), "bias": None}
    state["_buffers"] = {}
    state["_modules"] = {}  # (the parametrizations)
    stand_in.__dict__.update(state)
    return stand_in


_ADD, _IN_PLACE, _THROUGH, _SELECT, _NO_READ, _MUTATES, _EXTREMUM, _RELU, _SPLIT = 1, 2, 4, 8, 16, 32, 64, 128, 256
_WRITES = 512  # changes tensors other than its first argument in place (see _state.written_tensors)
_COPY = 1024  # a copy of its first argument, the same values (up to a cast): see _Engine.note_copy
_DERIVES = _THROUGH | _SELECT | _EXTREMUM | _SPLIT  # (the bits are by name: see _operation_kind)
# Operations y = f(x) whose backward B is linear with B(g * y) = B(g) * x: max pooling routes to where x equals its
# output, selections and reshapes move values. A fused chain (see _Engine._settle_chains) may run through them.
_THROUGH_NAMES = frozenset({"max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                            "adaptive_max_pool3d", "flatten", "view", "view_as", "reshape", "reshape_as", "squeeze",
                            "unsqueeze", "permute", "transpose", "contiguous", "__getitem__", "index_select",
                            "gather", "expand", "expand_as", "narrow", "select", "t", "movedim", "unflatten", "clone",
                            "amax", "amin"})
# Concatenations: each part of the output is one input moved (B(g * y) = B(g) * x part by part), not fusable.
_SELECT_NAMES = frozenset({"cat", "concat", "concatenate", "stack"})
# Splits: each output is a part of the input (not fusable: the parts may go different ways).
_SPLIT_NAMES = frozenset({"chunk", "split", "split_with_sizes", "tensor_split", "unbind", "hsplit", "vsplit"})
# max/min over a dimension (values and indices), and scatter reductions by max/min: selections too, when they
# have one relevance-carrying source (see _Engine.derive).
_EXTREMUM_NAMES = frozenset({"max", "min", "scatter_reduce", "scatter_reduce_"})
# Functional forms that clamp when called with inplace=True (the others, e.g. F.silu, change values in place).
_CLAMP_FUNCTIONS = frozenset({"relu", "relu6", "hardtanh", "threshold"})
# Under no_grad nothing carries relevance: an operation that may change a value a point holds is looked at, the
# others only count as readers.
_WATCHED_WITHOUT_GRAD = _IN_PLACE | _MUTATES | _RELU | _WRITES
_grad_enabled = torch.is_grad_enabled
_TRACKED = ("pass", "through", "select")  # ReLU outputs and what derives from them (see _Engine._relu_hook)


def _in_place(name: str) -> bool:
    """``add_``, ``__iadd__``, ``__setitem__``: an operation that changes its first argument, other than a ReLU-like
    clamp."""
    return changes_first_argument(name) and name not in _CLAMPS


def _operation_kind(func) -> int:
    name = operation_name(func)
    in_place = _in_place(name)
    return (_ADD if name in ADD_NAMES else 0) | (_IN_PLACE if in_place else 0) \
        | (_THROUGH if name in _THROUGH_NAMES else 0) | (_SELECT if name in _SELECT_NAMES else 0) \
        | (_EXTREMUM if name in _EXTREMUM_NAMES else 0) | (_NO_READ if name in NO_READ_NAMES else 0) \
        | (_MUTATES if in_place or name in _CLAMPS else 0) | (_RELU if name in ("relu", "relu_") else 0) \
        | (_SPLIT if name in _SPLIT_NAMES else 0) \
        | (_WRITES if name in WRITES_OTHERS or in_place and name.startswith("_foreach_") else 0) \
        | (_COPY if name in COPY_NAMES else 0)


@functools.lru_cache(maxsize=64)  # (on every ReLU of every pass: by value, a few (epsilon, dtype) pairs at most)
def _vanishes(epsilon: float, dtype: torch.dtype) -> bool:
    """Whether the stabiliser ``epsilon`` is 0 in ``dtype`` (0 itself, or 1e-8 in float16): where a ReLU output is 0
    it then cannot stand in for its layer's output (zennit divides by ``z < 0`` there; the output gives 0 / 0)."""
    return epsilon == 0 or (dtype.is_floating_point and float(torch.tensor(epsilon, dtype=dtype)) == 0.0)


def _torch_activation_forward(module: nn.Module) -> bool:
    """Whether ``module`` runs the forward of a torch activation (``nn.ReLU``, ``nn.SiLU``, ... or a subclass that
    keeps it): one functional call, given ``inplace`` as a keyword (see :class:`_Forward`)."""
    return getattr(type(module).forward, "__module__", None) == "torch.nn.modules.activation"


def _zero_below_zero(module: nn.Module) -> bool:
    """An activation whose output is 0 wherever its input is <= 0 (``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardtanh(0, t)``,
    ``nn.Threshold(t >= 0, 0)``): a chain through it may be fused (see :meth:`_Engine._settle_chains`)."""
    cls = type(module)
    if cls is nn.ReLU:
        return True
    if cls in (nn.ReLU6, nn.Hardtanh):
        return module.min_val == 0
    if cls is nn.Threshold:
        return module.threshold >= 0 and module.value == 0
    return False


def _carries_relevance(tensor: Tensor) -> bool:
    """Whether a module's input carries relevance into its output: it depends on the attributed inputs, and
    gradients are enabled (a module run under ``no_grad`` inside the forward hands nothing on)."""
    return tensor.requires_grad and _grad_enabled()


def _carries(result) -> bool:
    """Whether an operation's result carries relevance (a tensor requiring grad, or a tuple holding one)."""
    if isinstance(result, Tensor):
        return result.requires_grad
    return any(isinstance(v, Tensor) and v.requires_grad for v in result)


class _Forward(TorchFunctionMode):
    """Norm points at relevance-carrying sums, and copies of point values that an in-place operation would change.

    Every torch operation of the forward passes through here (the engine's own operations run under
    ``DisableTorchFunction``, unseen): the common case, neither a sum nor in place, costs a dict lookup (under
    no_grad, a dict lookup and a flag).
    """

    def __init__(self, engine: "_Engine") -> None:
        super().__init__()
        self.engine = engine
        self.kinds: dict = {}  # operation -> _ADD | _IN_PLACE | _THROUGH bits (for this pass only)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = self.kinds.get(func)
        if kind is None:
            kind = self.kinds[func] = _operation_kind(func)
        engine = self.engine
        if kwargs and kwargs.get("inplace") is True:  # F.silu(x, inplace=True), F.relu(x, inplace=True), ...
            if engine.out_of_place is not None:  # the call of a torch activation built in place: out of place
                engine.out_of_place = None  # (see _Engine.run)
                kwargs = {**kwargs, "inplace": False}
            else:
                kind |= _MUTATES | (0 if operation_name(func) in _CLAMP_FUNCTIONS else _IN_PLACE)
        if not (kind & _WATCHED_WITHOUT_GRAD or _grad_enabled()):  # nothing computed here carries relevance, but a
            result = func(*args, **kwargs) if kwargs else func(*args)  # read of a layer's output is a read (merging
            if engine.points and _reads(kind, args, result):  # a BatchNorm into the layer would change what it sees;
                engine.count_reads(args, kwargs, None)  # inside a custom autograd Function's forward, the Function's
            return result  # backward may hand relevance back: see count_uses)
        if kind:
            if kind & _ADD and not engine.depth:  # not inside a module that has a rule of its own
                added = relevance_add(func, args, kwargs)
                if added is not None:
                    engine.count_uses(added[:2])
                    return engine.norm_sum(*added)
            if kind & _MUTATES and args and isinstance(args[0], Tensor):
                engine.parameter_writes.before_change(args[0])
                if engine.rule_modules:
                    engine.check_input_change(args[0], func)
            if kind & _WRITES:  # an embedding's max_norm renorm, a _foreach_*_ list
                for tensor in written_tensors(func, args, kwargs):
                    engine.parameter_writes.before_change(tensor)
                    if kind & _IN_PLACE:  # (each tensor of the list as the first argument of an in-place operation)
                        if engine.rule_modules:
                            engine.check_input_change(tensor, func)
                        engine.keep_before_change(tensor)
            if kind & _IN_PLACE and args and isinstance(args[0], Tensor):
                engine.keep_before_change(args[0])
            elif kind & _MUTATES and args and isinstance(args[0], Tensor):  # an in-place ReLU-like clamp
                engine.keep_before_clamp(args[0])
        # (a scatter's base, before the scatter: it has one source only where the base carries no relevance)
        based = kind & _EXTREMUM and args and isinstance(args[0], Tensor) and args[0].requires_grad
        result = func(*args, **kwargs) if kwargs else func(*args)
        if not (engine.points and _reads(kind, args, result)):
            return result
        grad = _carries(result)
        engine.count_reads(args, kwargs, grad)
        if kind & _DERIVES and grad:
            engine.derive(kind, args, kwargs, result, based)
        if kind & _RELU:
            engine.relu_output = result  # (see _Engine._relu_hook; a caller's hook may change it in place)
            engine.relu_version = result._version if isinstance(result, Tensor) else None
        if kind & _COPY and grad:
            engine.note_copy(args, result)
        return result


def _reads(kind: int, args: tuple, result) -> bool:
    """Whether an operation of ``kind`` that returned ``result`` read the values of its arguments: not a size or
    dtype query, not one that reads no value (``_NO_READ``), not one that returns its input itself (dropout in eval,
    contiguous, ...; unless it changed it in place)."""
    return has_tensor(result) and not (kind & _NO_READ or args and result is args[0] and not kind & _MUTATES)


def _edge_counts(root) -> dict:
    """How many nodes of the autograd graph below ``root`` read each edge ``(node, output_nr)``
    (:func:`_graph_edges`)."""
    counts: dict = {}
    for edge in _graph_edges(root):
        counts[edge] = counts.get(edge, 0) + 1
    return counts


def _graph_edges(root):
    """Every edge ``(node, output_nr)`` of the autograd graph below the node ``root``, once per node reading it (a
    walk over the graph's nodes)."""
    seen, stack = {root}, [root]
    while stack:
        for edge in stack.pop().next_functions:
            node = edge[0]
            if node is None:
                continue
            yield edge
            if node not in seen:
                seen.add(node)
                stack.append(node)


class _Engine:
    """One attribution pass over ``model``: hooks and points live only inside :meth:`run`."""

    def __init__(self, model: nn.Module, epsilon: float, types: RuleTypes, modules: Sequence[nn.Module],
                 speculate: bool = False, function_views: frozenset = frozenset(), cautious: bool = True) -> None:
        self.model = model
        self.thread = _thread()  # the hooks act on this thread's forward only (see _own_thread)
        # every value the graph may hold is kept (a merged layer's output too), and readers the engine did not see
        # are counted from the graph after the forward (see hidden_readers); otherwise they make the pass run again
        self.cautious = cautious
        self.registered: list[_Point] = []  # the points with a graph node, in the order made
        self.sum_operands: dict[int, list] = {}  # id(base) -> (base, Norm sum point, operand index): see norm_sum
        self.function_views = function_views  # rule modules whose view outputs get the in-place Function
        self.view_points: list[_Point] = []  # points at view outputs with a node pre-hook (see _output_prehook)
        self.view_bases: dict[int, list[_Point]] = {}  # id(base) -> points whose result is a view of it
        # every node pre-hook made (removed after the pass, also where a point's entry in `points` was replaced)
        self.output_hooks: list = []
        self.speculate = speculate  # ReLUs after a rule layer may run in place (see _relu_hook)
        self.epsilon = epsilon
        self.types = types
        self.modules = modules
        self.first = first_linear(model, types, modules)
        # id(result) -> point. Results are weakly referenced (a merged layer's output is freed as soon as its
        # BatchNorm has read it); an id reused by a new tensor is told apart by the dead reference.
        self.points: dict[int, _Point] = {}
        # storage address of a point's z when registered -> the points (`y.detach().add_(1)`, `y.data.mul_(2)`:
        # an in-place change through an alias that autograd does not see; checked again on use)
        self.storages: dict[int, list[_Point]] = {}
        self.depth = 0  # how many hooked modules' forwards are running
        # the rule modules whose forwards are running, innermost last, and what their input point's input is a view
        # of (itself if none; None without an input point): see check_input_change
        self.rule_modules: list[tuple[nn.Module, Tensor | None, bool]] = []  # (..., whether the call gets Flat)
        self.flat_nodes: set = set()  # the graph nodes of the Flat calls' results (see _after_flat)
        # (rule module, its input, the input's version when read): an input changed in place after (see _changed_input)
        self.read_inputs: list[tuple[nn.Module, Tensor, int]] = []
        self.merges: list[tuple[_Point, _Point, tuple]] = []  # (linear point, BatchNorm point, copies' nodes)
        # id(copy) -> (a linear layer's point, the copy (weakly), the graph nodes of the copies from its output to
        # it): a copy of a layer's output (`.contiguous()` in channels_last, `.float()` under autocast) that a
        # BatchNorm may read, as it would read the output itself (see note_copy)
        self.copies: dict[int, tuple[_Point, weakref.ref, tuple]] = {}
        # chains z -> ReLU [-> max pooling / reshapes] -> rule layer (see _settle_chains)
        # id(ReLU's pass point) -> (point at z, ReLU output, whether it is an nn.ReLU: x = z wherever x != 0)
        self.relus: dict[int, tuple[_Point, Tensor, bool]] = {}
        self.links: list[tuple[_Point, _Link]] = []  # (point of a rule layer's input, that layer's input point)
        self.derived: list[_Point] = []  # points of tensors derived from ReLU outputs, in the order made
        self.speculative: list[_Point] = []  # ReLU points whose readers must all be proportional (see _verify)
        # nn.ReLU modules built with inplace=True that follow another child of an nn.Sequential -> (that child, the
        # Sequential), or None where a ReLU has several; and the Sequentials whose own forward is running
        self.in_place_relus: dict[nn.Module, tuple[nn.Module, nn.Module] | None] = {}
        self.sequentials_running: dict[nn.Module, int] = {}
        self.in_place_now: nn.Module | None = None  # the ReLU that _relu_pre_hook let run in place
        self.out_of_place: nn.Module | None = None  # the torch activation built in place whose call runs now
        self.caller_hooked: set[nn.Module] = set()  # modules with a rule and forward hooks of the caller's (run)
        self.relu_output: Tensor | None = None  # the last relu's result (a hook may replace a module's output)
        self.relu_version: int | None = None  # ... and its version then
        self.first_options: tuple = ((), {})  # the other arguments of the Flat layer's call being run
        # a rule module's output (and its version) before the caller's forward hooks ran (see _own_output)
        self.own_outputs: dict[nn.Module, tuple[Tensor, int]] = {}
        self.scales: dict[nn.Module, Tensor] = {}  # each BatchNorm's scale (see _batchnorm_scales)
        self.parameter_writes = ParameterWrites(modules)  # parameters the forward changes in place: put back after

    # -- points ------------------------------------------------------------------------------------------------
    def _register(self, point: _Point, result: Tensor) -> Tensor:
        point.result = weakref.ref(result)
        self.points[id(result)] = point
        if point.z is not None:  # (for an in-place change through an alias: see keep_before_change)
            self.storages.setdefault(point.z.untyped_storage().data_ptr(), []).append(point)
        node = result.grad_fn
        if node is not None:
            point.node = (node, result.output_nr)
            self.registered.append(point)
        return result

    def hidden_readers(self, logits) -> bool:
        """Whether the autograd graph of ``logits`` has readers of a point's value that the engine did not count:
        operations it cannot see, such as a TorchScript function's or an extension's (a custom autograd Function's
        are seen under no_grad, see :meth:`count_uses`). Every decision that counts readers (a BatchNorm merged into
        the layer it alone reads, a ReLU output standing in for its layer's output, a fused chain) is taken after the
        forward on ``uses``: each point's ``uses`` is raised to the number of graph edges into its node (a walk over
        the graph's nodes, ~0.1 ms for MobileNetV2's 300). A point the graph reads less often (a reader whose result
        does not reach the output) keeps its count."""
        root = logits.grad_fn if isinstance(logits, Tensor) else None
        if root is None or not self.registered:
            return False
        edges = _edge_counts(root)
        hidden = False
        for point in self.registered:
            count = edges.get(point.node, 0) - point.engine_edges
            if count > point.uses:
                point.uses = count
                hidden = True
        return hidden

    def point_of(self, tensor: Tensor) -> _Point | None:
        """The point whose result ``tensor`` is (``None`` for any other tensor, also one that took a freed result's
        id)."""
        point = self.points.get(id(tensor))
        return point if point is not None and point.result() is tensor else None

    def count_uses(self, args, grad: bool | None = True) -> None:
        """One more reader of every point among ``args``; a ReLU output (or what derives from it) is counted only
        when the reader's result carries relevance (``grad``), or may (``None``: read with gradients disabled, e.g.
        inside a custom ``autograd.Function``'s forward, whose backward may hand relevance back to it all the same: a
        reader that does not hand it relevance proportional to it, as far as the engine can tell)."""
        for arg in args:
            if isinstance(arg, Tensor):
                point = self.point_of(arg)
                if point is None:
                    continue
                if point.kind in _TRACKED:
                    point.uses += grad is not False
                    continue
                point.uses += 1
                if (point.z is None and point.kind in ("epsilon", "flat")) or point.substitute:  # a merged layer's
                    point.z = arg.detach()  # output read again (the merge will be undone), or a layer's output
                    point.substitute = False  # read after its ReLU: its own values again
            elif isinstance(arg, (tuple, list)):
                self.count_uses(arg, grad)

    def count_reads(self, args: tuple, kwargs: dict | None, grad: bool | None) -> None:
        """:meth:`count_uses` for an operation's positional and keyword arguments."""
        self.count_uses(args, grad)
        if kwargs:
            self.count_uses(tuple(kwargs.values()), grad)

    def keep_before_change(self, tensor: Tensor, copy: Tensor | None = None) -> None:
        """``tensor`` (or what it is a view of) is about to change in place: points reading it keep a copy (``copy``,
        a copy of ``tensor`` already made, where it is one of the same values)."""
        if self.sum_operands:
            self._keep_operands(tensor)
        base = tensor._base
        if base is not None and self.view_bases:  # a layer's output that is a view of the same base (h[:, 0] of
            for point in self.view_bases.get(id(base), ()):  # h = linear(tokens)): its values may change too
                result = point.result() if point.result is not None else None
                if result is None or result._base is not base or point.kind not in ("epsilon", "norm", "hooked"):
                    continue
                if point.z is None or point.substitute or point.z.data_ptr() == result.data_ptr():
                    point.z = result.detach().clone()
                    point.substitute = False
        if not tensor.requires_grad and self.storages:  # an alias (.detach(), .data, a view of one) or unrelated
            self._keep_aliased(tensor)
        for candidate in (tensor, tensor._base):
            point = self.points.get(id(candidate)) if candidate is not None else None
            if point is not None and point.shares is not None:  # a ReLU output standing in for its layer's z
                if point.in_place:  # the ReLU's own backward needs its output: run again without this
                    raise _Misjudged
                layer = point.shares  # (see _relu_hook): the layer keeps a copy of the ReLU's values
                if layer.z is not None and layer.z.data_ptr() == candidate.data_ptr():
                    layer.z = candidate.detach().clone()
                continue
            if point is None or point.kind in ("flat", "pass", "through", "select"):
                continue
            if point.z is None or point.substitute:  # a merged layer's output (see _batchnorm), or one whose ReLU
                if point.result() is candidate:  # output stands in: kept, in case it is needed
                    point.z = candidate.detach().clone()
                    point.substitute = False
            elif point.z.data_ptr() == candidate.data_ptr():
                same = copy is not None and candidate is tensor and point.z.shape == copy.shape \
                    and point.z.stride() == tensor.stride()
                point.z = copy if same else point.z.clone()

    def _keep_aliased(self, tensor: Tensor) -> None:
        """Points whose values share ``tensor``'s storage (``tensor`` is an alias autograd does not connect to them:
        ``y.detach()``, ``y.data``) keep a copy before it changes in place; a Norm sum's operands too."""
        if tensor.layout != torch.strided:  # a sparse tensor: its values may alias a point's (to_torch_coo_tensor's,
            values = tensor._values() if tensor.layout == torch.sparse_coo else tensor.values()  # CSR's...)
            if values.layout != torch.strided:
                return
            tensor = values
        if tensor.is_meta:
            return
        address = tensor.untyped_storage().data_ptr()
        for point in self.storages.get(address, ()):
            if point.kind in ("flat", "pass", "through", "select"):
                continue
            if point.z is None:  # a merged layer's output: kept, in case another reader takes the merge back
                result = point.result() if point.result is not None else None
                if result is not None and result.untyped_storage().data_ptr() == address:
                    point.z = result.detach().clone()
            elif point.z.untyped_storage().data_ptr() == address:
                point.z = point.z.clone()
        for entries in self.sum_operands.values():
            for _, point, index in entries:
                if point.operands is not None:
                    value = point.operands[index][0]
                    if value.untyped_storage().data_ptr() == address:
                        value = value.clone()
                        point.operands[index] = [value, value._version]

    def keep_before_clamp(self, tensor: Tensor) -> None:
        """``tensor`` is about to be clamped in place (``relu_``, ``clamp_(min=0)``, ``F.hardtanh(x, inplace=True)``,
        ...: zero gradient wherever a value changes). A point whose values it changes needs no copy while nothing has
        read them: all the relevance that reaches the point then comes through the clamp, zero wherever a value
        changed. Once something has (``z * 0.5``, then ``z.relu_()``), that reader's relevance reaches the point
        wherever the clamp changes ``z`` too: as any in-place change (:meth:`keep_before_change`)."""
        base = tensor._base
        points = [self.points.get(id(candidate)) for candidate in (tensor, base) if candidate is not None]
        if base is not None:
            points += self.view_bases.get(id(base), ())
        if any(point is not None and point.uses for point in points):
            self.keep_before_change(tensor)

    def _watch_operands(self, point: _Point, operands: tuple) -> None:
        """Note the Norm sum's operands (``None``: one whose value is a copy) by their base, for
        :meth:`keep_before_change`."""
        for index, operand in enumerate(operands):
            if operand is not None:
                base = operand if operand._base is None else operand._base
                self.sum_operands.setdefault(id(base), []).append((base, point, index))

    def _keep_operands(self, tensor: Tensor) -> None:
        """Sum operands sharing ``tensor``'s base (``tensor`` itself, a view of it, its base) keep a copy of their
        values before ``tensor`` changes in place."""
        for candidate in (tensor, tensor._base):
            if candidate is None:
                continue
            for base, point, index in self.sum_operands.get(id(candidate), ()):
                if base is candidate and point.operands is not None:
                    value = point.operands[index][0].clone()
                    point.operands[index] = [value, value._version]

    def norm_sum(self, a: Tensor, b: Tensor, in_place: bool) -> Tensor:
        for operand in (a, b):  # Norm hands each operand relevance proportional to it
            source = self.point_of(operand)
            if source is not None and source.kind in _TRACKED:
                source.good += 1
        point = _Point("norm", a, NORM_STABILIZER)  # z: set by the sum point's forward
        if not in_place:
            result = self._register(point, _SumPoint.apply(a, b, None, point))
            self._watch_operands(point, (a, b))
            return result
        a_value = a.detach().clone()
        result = _SumPoint.apply(a, b, a_value, point)
        self._watch_operands(point, (None, b))
        self.keep_before_change(a, a_value)  # e.g. the BatchNorm point of `out` in `out += identity`
        source = self.point_of(a)
        if source is not None and source.node is not None and source.node[0] is a.grad_fn:
            source.engine_edges += 1  # (the copy's node has an edge into a's, which hands it no relevance)
        a.copy_(result)  # autograd: a's new value comes from the sum point only
        point.z = a.detach()  # the same values, in the caller's storage (the sum's own buffer is freed)
        return self._register(point, a)

    # -- hooks (the engine's own operations run unseen by _Forward: _plain) ------------------------------------
    @_own_thread
    def _enter(self, module: nn.Module, args) -> None:
        self.depth += 1

    @_own_thread
    def _out_of_place(self, module: nn.Module, args) -> None:
        """Before a torch activation built in place: its functional call runs out of place (see :class:`_Forward`)."""
        self.out_of_place = module

    @_own_thread
    def _enter_out_of_place(self, module: nn.Module, args) -> None:
        self.depth += 1
        self.out_of_place = module

    @_own_thread
    def _rule_pre_hook(self, module: nn.Module, args):
        self.depth += 1
        if not args:  # (module(input=x): its input is not seen)
            raise UnsupportedModel(keyword_input_problem(module))
        problem = transformed_input_problem(module, args[0])
        if problem is not None:
            raise UnsupportedModel(problem)
        flat = module is self.first and not (self.flat_nodes and isinstance(args[0], Tensor)
                                             and self._after_flat(args[0]))
        self.rule_modules.append((module, None, flat))
        if flat or not isinstance(args[0], Tensor):
            return None
        with _plain():
            if not _carries_relevance(args[0]):
                return None
            x = args[0]
            self.count_uses(args[:1])  # the module reads its input (through the view made here)
            link = None
            source = self.point_of(x)
            if source is not None and source.kind in _TRACKED:
                source.good += 1  # the input point hands x relevance c * x
                if source.kind != "select":
                    link = _Link()
                    self.links.append((source, link))
            self.rule_modules[-1] = (module, x if x._base is None else x._base, False)
            self.read_inputs.append((module, x, x._version))
            return (_InputPoint.apply(x, link), *args[1:])

    @_own_thread
    def _rule_hook(self, module: nn.Module, args, out):
        self.depth -= 1
        flat = self.rule_modules.pop()[2]
        if not args or not isinstance(args[0], Tensor):
            return None
        with _plain():
            if not _carries_relevance(args[0]):
                return None
            if not isinstance(out, Tensor):
                raise UnsupportedModel(f"a {type(module).__name__} returned a {type(out).__name__}, not a tensor")
            own, version = self.own_outputs.pop(module, (None, None)) if self.own_outputs else (None, None)
            if own is out and out._version != version and not flat:  # a hook of the caller's
                own = module.forward(*args)  # changed it in place: the module's own output again (rare)
            if self.types.kind(module) == "norm":
                point = _Point("norm", out.detach(), NORM_STABILIZER)
                point.origin = module
            elif flat:
                point = _Point("flat", out.detach(), self.epsilon, module, args[0])
                point.options, self.first_options = self.first_options, ((), {})
                result = self._register(point, _RulePoint.apply(out.detach(), None, args[0], point))
                self.flat_nodes.add(result.grad_fn)
                return result
            else:
                point = _Point("epsilon", out.detach(), self.epsilon, module)
                point.origin = module
            if own is not None and own is not out and isinstance(own, Tensor) and own.requires_grad \
                    and own.shape == out.shape:  # a forward hook of the caller's changed the output: no BatchNorm
                point.kind, point.z = "hooked", own.detach()  # merges into it, no ReLU output stands in for it
                return self._register(point, _RulePoint.apply(out.detach(), own, None, point))
            if out.grad_fn is None:
                return self._register(point, _RulePoint.apply(out, None, None, point))
            if out._is_view():  # (see _output_prehook)
                self.view_bases.setdefault(id(out._base), []).append(point)
                if module in self.function_views:
                    return self._register(point, _RulePoint.apply(out, None, None, point))
                point.alias, point.version = out.detach(), out._version
                self.view_points.append(point)
            point.handle = out.grad_fn.register_prehook(functools.partial(_output_prehook, point, out.output_nr))
            self.output_hooks.append(point.handle)
            return self._register(point, out)

    @_own_thread
    def _first_hook(self, module: nn.Module, args, kwargs, out):
        self.first_options = (args[1:], kwargs)  # (ConvTranspose's output_size: Flat re-runs the layer with them)
        return self._rule_hook(module, args, out)

    @_own_thread
    def _own_output(self, module: nn.Module, args, out) -> None:
        """(Runs before the caller's forward hooks of a rule module, see :meth:`run`.)"""
        if isinstance(out, Tensor):
            self.own_outputs[module] = (out, out._version)

    @_own_thread
    def _pass_hook(self, module: nn.Module, args, out):
        self.depth -= 1
        return self._pass(module, args, out)

    @_own_thread
    def _pass(self, module: nn.Module, args, out):
        self.out_of_place = None  # (taken by the activation's call)
        if not args or not isinstance(args[0], Tensor):
            return None
        with _plain():
            if not _carries_relevance(args[0]):
                return None
            if not isinstance(out, Tensor) or out.shape != args[0].shape:
                raise UnsupportedModel(f"the Pass rule needs an elementwise {type(module).__name__}")
            point = _Point("pass", None, 0.0)
            result = _RulePoint.apply(out.detach(), args[0], None, point)
            if _zero_below_zero(module) and not self._hooked(module):  # a candidate chain z -> ReLU -> rule layer
                # (see _settle_chains; it takes `out` for the activation's own output, which a hook may change)
                producer = self.point_of(args[0])
                if producer is not None and producer.kind == "epsilon":
                    self.relus[id(point)] = (producer, result, type(module) is nn.ReLU)
                    self._register(point, result)  # its readers are counted
            return result

    @_own_thread
    def _relu_pre_hook(self, module: nn.Module, args) -> None:
        """Run a ReLU built with ``inplace=True`` in place, as the caller's model does, where nothing can read the rule
        layer's output ``z`` it changes, before or after (its point then divides by the ReLU output: see
        :meth:`_relu_hook`): ``z`` is the output of the ReLU's preceding sibling in an ``nn.Sequential``, which
        hands it on to the ReLU alone, and nothing has read it yet. Elsewhere a forward may read ``z`` again after
        the ReLU, and zennit's rules (whose hooks run every module on a clone of its input) see ``z`` unchanged
        there: the ReLU runs out of place, as every other activation built in place."""
        if args and isinstance(args[0], Tensor):
            producer = self._relu_producer(args[0])
            previous, parent = self.in_place_relus[module]
            if producer is not None and producer.alias is None and producer.uses == 0 and producer.z is not None \
                    and not _vanishes(producer.epsilon, producer.z.dtype) and producer.origin is previous \
                    and self.sequentials_running.get(parent) and producer.z.data_ptr() == args[0].data_ptr() \
                    and not self._hooked(previous):  # (a hook may keep z)
                self.in_place_now = module
                return
        self.out_of_place = module

    def _relu_producer(self, tensor: Tensor) -> _Point | None:
        """The active rule point (Epsilon, Norm, Flat) whose result ``tensor`` is, if any."""
        producer = self.point_of(tensor) if _carries_relevance(tensor) else None
        return producer if producer is not None and producer.kind in ("epsilon", "norm", "flat") \
            and producer.active else None

    @_own_thread
    def _relu_hook(self, module: nn.Module, args, out):
        """A ``nn.ReLU`` right after a rule layer (or a merged BatchNorm, or a Norm sum), which alone read its output
        ``z``: Pass, and the layer's point divides by the ReLU output ``x`` instead of ``z`` (``z`` is freed; run in
        place, it is not even made). Where ``z > 0`` they are equal; where ``z <= 0``, ``x = 0``, and so is the
        relevance that reaches ``x`` when every reader hands ``x`` relevance proportional to it (a rule layer's input
        point, a Norm sum, selections and concatenations leading to those): :meth:`_verify` checks that after the
        forward, and the pass is rerun without this where it does not hold. Run in place, the ReLU's own backward
        (zero where ``x = 0``) stands for Pass under the same condition."""
        in_place = self.in_place_now is module
        self.in_place_now = self.out_of_place = None  # (set by _relu_pre_hook / _out_of_place for this call)
        own, self.relu_output = self.relu_output, None
        if not args or not isinstance(args[0], Tensor):
            return None
        inp = args[0]
        with _plain():
            producer = self._relu_producer(inp)
            if producer is None or producer.uses != 1 or out is not own or out._version != self.relu_version \
                    or in_place and out is not inp \
                    or out.shape != inp.shape or _vanishes(producer.epsilon, out.dtype):
                if in_place:  # e.g. a forward hook of the caller's read or replaced the ReLU output
                    raise _Misjudged
                return self._pass(module, args, out)
            point = _Point("pass", None, 0.0)
            point.shares = producer  # its z is x's storage from here on
            if in_place:
                result = out
                point.in_place = True
            else:
                result = _RulePoint.apply(out.detach(), inp, None, point)
                producer.z = out.detach()
            producer.substitute = True
            self.speculative.append(point)
            if producer.kind == "epsilon":  # a candidate chain z -> ReLU -> rule layer (see _settle_chains)
                self.relus[id(point)] = (producer, result, True)
            self._register(point, result)
            return None if in_place else result

    def _hooked(self, module: nn.Module) -> bool:
        """Whether forward hooks of the caller's run after ``module`` (its own or process-wide ones): they may
        change its output, in place or by returning another, so that the output the engine's hook sees is not the
        module's own."""
        return module in self.caller_hooked or bool(_global_forward_hooks)

    def _after_flat(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` derives from the result of an earlier call of the first layer (``a(relu(a(x)))``): that
        call is not the first layer's (Flat) but a later layer's (Epsilon), as on the unrolled model. Calls on parts
        of the input (the layer run on each sample) stay Flat. A walk of ``tensor``'s graph back to the leaves or a
        Flat call's node (only for a repeated call of the first layer)."""
        root = tensor.grad_fn
        return root is not None and (root in self.flat_nodes
                                     or any(edge[0] in self.flat_nodes for edge in _graph_edges(root)))

    def check_input_change(self, tensor: Tensor, func) -> None:
        """Refuse an in-place change of the input of the rule layer whose forward is running (``x.mul_(2)`` in its
        forward, or of a view of ``x``): the rule reads the input the layer was given (autograd refused it with "Output
        0 of _InputPoint is a view and is being modified inplace", naming no layer)."""
        module, root, _ = self.rule_modules[-1]
        if root is not None and (tensor if tensor._base is None else tensor._base) is root:
            name = type(module).__name__
            raise UnsupportedModel(f"the forward of {name} changes its input in place "
                                   f"({getattr(func, '__name__', func)}), and LRP's rule for that layer reads the "
                                   f"input it was given; change it out of place in {name}.forward (x = x * 2 rather "
                                   "than x.mul_(2))")

    def _changed_input(self) -> str:
        """Why the backward failed at a rule layer's input point (autograd: "Output 0 of _InputPoint is a view and its
        base ... has been modified inplace"): the forward changed that input in place after the layer had read it
        (``x += f(x)``), which a training step's backward refuses too (the layer's weight gradient needs the input)."""
        paths = {module: path for path, module in self.model.named_modules(remove_duplicate=False)}
        names = list(dict.fromkeys(f"{paths.get(module, '?')} ({type(module).__name__})"
                                   for module, x, version in self.read_inputs if x._version != version))
        which = f"the input of {' and '.join(names)}" if names else "a layer's input"
        return (f"its forward changes {which} in place after the layer has read it (e.g. `x += f(x)`), which the "
                "relevance cannot go through (nor a training step's backward: the layer's weight gradient needs that "
                "input); change it out of place (x = x + f(x))")

    def _verify(self, logits: Tensor) -> None:
        """Raise :class:`_Misjudged` where a ReLU output that stands in for its layer's output (see
        :meth:`_relu_hook`) has a reader that does not hand it relevance proportional to it (the model's output
        itself gets the output relevance)."""
        output = self.point_of(logits)
        if output is not None and output.kind in _TRACKED:
            output.bad = True
        for point in reversed(self.derived):  # derived after their sources: a bad reader taints every source
            if point.bad or point.uses != point.good:
                for parent in point.parents:
                    parent.bad = True
        for point in self.speculative:  # (no reader seen at all: one the engine cannot see, a custom autograd
            if point.bad or point.uses != point.good or not point.uses:  # Function or a scripted function)
                raise _Misjudged

    @_own_thread
    def _batchnorm_hook(self, module: nn.Module, args, out):
        self.depth -= 1
        return self._batchnorm(module, args, out)

    @_own_thread
    def _batchnorm(self, module: nn.Module, args, out):
        if not args or not isinstance(args[0], Tensor):
            return None
        inp = args[0]
        if not _carries_relevance(inp):
            return None
        producer, copies = self.point_of(inp), ()
        if producer is None:  # a copy of a layer's output: merged as into the output itself, where the BatchNorm
            entry = self.copies.get(id(inp))  # alone reads the copy (see _settle_merges)
            if entry is not None and entry[1]() is inp:
                producer, _, copies = entry
        if producer is None or producer.kind not in ("epsilon", "flat") or not producer.active or producer.merged:
            return self._pass(module, args, out)  # follows no linear layer (a second BatchNorm follows the first,
            # merged one): Pass, as in zennit's composite
        # Merge: the linear layer's rule moves to the BatchNorm's output (undone after the forward if anything
        # else reads the layer's output: merging the weights would change what that reader sees)
        with _plain():
            own = None
            if not _builtin(module) or module in self.caller_hooked or _global_forward_hooks:
                own = self._own_batchnorm(module, inp, out)
            producer.active = False
            if producer.uses == 1 and not self.cautious and not copies:  # the BatchNorm alone read it so far: its
                producer.z = None  # value is not needed unless another reader comes (count_uses, keep_before_change
                # take it back; a copy's other readers are seen after the forward only: kept for them)
            flat = producer.kind == "flat"
            point = _Point(producer.kind, out.detach(), self.epsilon, producer.module, producer.inp)
            if own is not None and not flat:  # the merged layer's output is the BatchNorm's own, not `out`: as a
                point.kind, point.z = "hooked", own  # rule layer's changed by a hook (no ReLU output stands in)
            point.origin, point.merged = module, True
            point.options = producer.options
            if not flat:
                point.scale = _batchnorm_scale(module, out, self.scales)
            self.merges.append((producer, point, copies))
            return self._register(point, _RulePoint.apply(out.detach(), inp, producer.inp if flat else None, point))

    @staticmethod
    def _own_batchnorm(module: nn.Module, inp: Tensor, out) -> Tensor | None:
        """What the BatchNorm ``module`` itself computes on ``inp`` (eval statistics), where its output ``out`` is
        another tensor: a subclass whose forward does more (timm's ``BatchNormAct2d`` applies its activation inside),
        or a forward hook of the caller's that changed it (as for rule layers, zennit's rule then treats ``out`` as
        the module's output and divides by the module's own); ``None`` where ``out`` is that. A subclass returning
        no tensor of its input's shape is refused."""
        name = type(module).__name__
        if not isinstance(out, Tensor):
            raise UnsupportedModel(f"a {name} (a BatchNorm, merged into the layer before it) returned a "
                                   f"{type(out).__name__}, not a tensor")
        if out.shape != inp.shape:
            raise UnsupportedModel(f"a {name} (a BatchNorm, merged into the layer before it) returned a tensor of "
                                   f"shape {tuple(out.shape)} for an input of shape {tuple(inp.shape)}: merging needs "
                                   "an elementwise BatchNorm")
        with torch.no_grad():
            own = nn.functional.batch_norm(inp, module.running_mean, module.running_var, module.weight, module.bias,
                                           False, 0.0, module.eps)
        return None if torch.equal(own, out) else own

    def derive(self, kind: int, args: tuple, kwargs: dict | None, result, based: bool = False) -> None:
        """``result`` moves values of ReLU outputs (or of what derives from them): a selection, reshape or max
        pooling of one (``"through"``: a fused chain may run through it), or a concatenation or the parts of a split
        (``"select"``). Its readers are then followed as the ReLU output's own (see :meth:`_verify`). ``based``: the
        first argument carried relevance before the operation (a scatter into it then has two sources)."""
        sources, fusable = (), True
        if kind & _SPLIT and isinstance(result, (tuple, list)):
            point = self.point_of(args[0]) if args and isinstance(args[0], Tensor) else None
            if point is not None and point.kind in _TRACKED:
                point.good += 1
                for part in result:
                    if isinstance(part, Tensor):
                        self._derived("select", (point,), part)
            return
        if kind & _THROUGH:
            sources = args[:1]
        elif kind & _SELECT:
            sources, fusable = (args[0] if args else (kwargs or {}).get("tensors", ())), False
        elif isinstance(result, Tensor) and len(args) >= 4:  # scatter_reduce(self, dim, index, src, reduce)
            reduce = args[4] if len(args) > 4 else (kwargs or {}).get("reduce")
            if reduce in ("amax", "amin") and not based:
                sources = args[3:4]
        elif isinstance(result, tuple) and len(result) == 2 and not (len(args) >= 2 and isinstance(args[1], Tensor)):
            sources, result = args[:1], result[0]  # max/min over a dimension (x.max(1), x.max(dim=1)): the values
        if not isinstance(result, Tensor):
            return
        parents = []
        for source in sources:
            point = self.point_of(source) if isinstance(source, Tensor) else None
            if point is not None and point.kind in _TRACKED:
                point.good += 1
                parents.append(point)
        if parents:
            self._derived("through" if fusable and len(parents) == 1 and len(sources) == 1 else "select",
                          tuple(parents), result)

    def _derived(self, kind: str, parents: tuple[_Point, ...], tensor: Tensor) -> None:
        derived = _Point(kind, None, 0.0)
        derived.parents = parents
        self.derived.append(derived)
        self._register(derived, tensor)

    def _settle_chains(self) -> None:
        """Fuse z -> ReLU [-> max pooling / reshapes] -> rule layer where each reads the previous one alone.

        The layer's input point would give ``R = c * y`` and the point at z ``B(R) / stab(z)`` (``B``: the backward
        of what lies between). ``B(c * y) = B(c) * x`` for the ReLU output ``x`` (max pooling routes to where ``x``
        equals its output; reshapes permute), and ``x = relu(z)`` equals ``z`` wherever it is not zero (where it
        is, the relevance is zero): so the layer's input point passes ``c`` on and the point at z computes
        ``B(c) * (x / (x + eps))``, the same numbers up to rounding: three passes over the tensor fewer in the
        backward, and z is freed before it. Where the layer reads fewer values ``y`` than ``x`` (a max pooling
        between), ``B(c * (y / (y + eps)))`` instead, as ``B(c * f(y)) = B(c) * f(x)`` for any elementwise ``f``
        (each value of ``y`` is one of ``x``'s): the layer's input point applies the rule on ``y``, and the point at
        z only multiplies by a merged BatchNorm's scale (three more passes over the pooling's input fewer). Other
        activations that are 0 wherever ``z <= 0`` (:func:`_zero_below_zero`:
        ReLU6, ``Hardtanh(0, t)``, ``Threshold(t >= 0, 0)``) fuse as ``B(c) * (x / (relu(z) + eps))``: ``stab(z) =
        z + eps`` wherever ``x != 0`` (two passes and a buffer fewer; z is kept). Not where ``epsilon`` is 0 in the
        tensor's dtype (:func:`_vanishes`): ``x / x`` is 0 / 0 at ``x = 0``, where zennit divides by ``z < 0``. Run
        after :meth:`_settle_merges`.
        """
        for point, link in self.links:
            top = point.result()  # what the layer reads (its input point keeps it)
            alone = point.uses == 1
            while alone and point.kind == "through":
                point = point.parents[0]
                alone = point.uses == 1
            producer, relu_output, relu = self.relus.get(id(point), (None, None, True)) if alone else (None,) * 3
            if producer is not None and producer.kind == "epsilon" and producer.active and producer.uses == 1 \
                    and producer.z is not None and producer.fused is None and not producer.topped \
                    and not _vanishes(producer.epsilon, relu_output.dtype):
                link.fused = True
                if relu and top is not None and top.numel() < relu_output.numel():  # (a pooling between)
                    link.epsilon, producer.topped, producer.z = producer.epsilon, True, None
                else:
                    producer.fused = relu_output.detach()
                    if relu:
                        producer.z = None
        self.links.clear()
        self.relus.clear()

    def note_copy(self, args: tuple, result) -> None:
        """``result`` is a copy of ``args[0]`` (:data:`COPY_NAMES`): where that is a linear layer's output whose rule
        a BatchNorm may take over (or a copy of one), a BatchNorm reading the copy merges into the layer
        (:meth:`_batchnorm`): "the BatchNorm that follows the layer in execution order", whatever the memory format
        or autocast dtype makes of ``.contiguous()`` / ``.float()`` (its own input itself, or a copy)."""
        source = args[0] if args and isinstance(args[0], Tensor) else None
        if source is None or not isinstance(result, Tensor) or result is source or result.shape != source.shape \
                or result.grad_fn is None or not result.is_floating_point():
            return
        point, copies = self.point_of(source), ()
        if point is None:
            entry = self.copies.get(id(source))
            if entry is None or entry[1]() is not source:
                return
            point, _, copies = entry
        if point.kind in ("epsilon", "flat") and point.active and not point.merged:
            self.copies[id(result)] = (point, weakref.ref(result), (*copies, (result.grad_fn, result.output_nr)))

    def _settle_merges(self, logits: Tensor) -> None:
        edges: dict | None = None
        for producer, point, copies in self.merges:
            if copies and edges is None:  # (the graph's edges, once: who reads each copy)
                edges = _edge_counts(logits.grad_fn) if logits.grad_fn is not None else {}
            if producer.uses != 1 or copies and any(edges.get(node, 0) != 1 for node in copies):  # read by more
                # than the BatchNorm (through the copies: each read by the next alone): not merged, Pass for it
                producer.active = True
                point.kind = "pass"
            elif producer.handle is not None:  # merged: the layer's output point has nothing to do
                producer.handle.remove()
                producer.handle = None

    # -- one pass ----------------------------------------------------------------------------------------------
    def _find_sequential_relus(self) -> list[nn.Module]:
        """``in_place_relus``: each ``nn.ReLU(inplace=True)`` that follows another child of an ``nn.Sequential`` (its
        forward: each child's output goes to the next one alone) -> (that child, the Sequential); ``None`` where it
        has several. Returns those Sequentials (their forwards are followed: a caller may run the children itself).
        """
        relus = self.in_place_relus
        parents = []
        for parent in self.modules:
            if type(parent).forward is nn.Sequential.forward:
                children = tuple(parent._modules.values())
                for previous, child in itertools.pairwise(children):
                    if type(child) is nn.ReLU and child.inplace:
                        place = (previous, parent)
                        relus[child] = place if relus.get(child, place) == place else None
                        if not parents or parents[-1] is not parent:
                            parents.append(parent)
        return parents

    @_own_thread
    def _sequential_enters(self, module: nn.Module, args) -> None:
        self.sequentials_running[module] = self.sequentials_running.get(module, 0) + 1

    @_own_thread
    def _sequential_leaves(self, module: nn.Module, args, out) -> None:
        running = self.sequentials_running.get(module, 0)  # (always called: also where a forward pre-hook of the
        if running:  # caller's, which ran before _sequential_enters, raised; torch would warn of a KeyError here)
            self.sequentials_running[module] = running - 1

    def run(self, leaves: tuple[Tensor, ...], call: Callable[[], Tensor],
            grad_output_fn: Callable[[Tensor], Tensor], status: dict | None = None) -> tuple[Tensor, ...]:
        types = self.types
        handles, in_place, norms = [], [], []
        try:
            for parent in self._find_sequential_relus() if self.speculate else ():
                handles.append(parent.register_forward_pre_hook(self._sequential_enters))
                handles.append(parent.register_forward_hook(self._sequential_leaves, always_call=True))
            for module in self.modules:
                kind = types.kind(module)
                if kind is None:
                    continue
                if module._forward_hooks:  # the caller's (before the engine's: see _relu_pre_hook, _own_output)
                    self.caller_hooked.add(module)
                if kind == "activation":  # built in place: its input keeps its value and its autograd identity
                    built_in_place = getattr(module, "inplace", False) is True  # (as in zennit, whose hooks run
                    # every module on a clone of its input). A torch activation's forward is one functional call with
                    # inplace=True, which _Forward runs out of place on this thread only (an inference forward in
                    # another thread runs it as built); any other's `inplace` flag is off for the pass
                    rewritten = built_in_place and _torch_activation_forward(module)
                    if built_in_place and not rewritten:
                        module.inplace = False
                        in_place.append(module)
                    if self.speculate and type(module) is nn.ReLU:
                        if built_in_place and self.in_place_relus.get(module) is not None:
                            handles.append(module.register_forward_pre_hook(self._relu_pre_hook))
                        elif rewritten:
                            handles.append(module.register_forward_pre_hook(self._out_of_place))
                        handles.append(module.register_forward_hook(self._relu_hook))
                    elif _builtin(module):
                        if rewritten:
                            handles.append(module.register_forward_pre_hook(self._out_of_place))
                        handles.append(module.register_forward_hook(self._pass))
                    else:
                        handles.append(module.register_forward_pre_hook(self._enter_out_of_place if rewritten
                                                                        else self._enter))
                        handles.append(module.register_forward_hook(self._pass_hook))
                elif kind == "batchnorm":
                    norms.append(module)
                    if _builtin(module):
                        handles.append(module.register_forward_hook(self._batchnorm))
                    else:
                        handles.append(module.register_forward_pre_hook(self._enter))
                        handles.append(module.register_forward_hook(self._batchnorm_hook))
                else:  # linear, norm
                    if module in self.caller_hooked:  # the rule divides by the module's own output
                        handles.append(module.register_forward_hook(self._own_output, prepend=True))
                    handles.append(module.register_forward_pre_hook(self._rule_pre_hook))
                    if module is self.first:
                        handles.append(module.register_forward_hook(self._first_hook, with_kwargs=True))
                    else:
                        handles.append(module.register_forward_hook(self._rule_hook))
            self.scales = _batchnorm_scales(norms)
            with _Forward(self):
                logits = call()
            changed = frozenset(point.origin for point in self.view_points
                                if point.alias._version != point.version)
            if changed:
                raise _ViewsChanged(changed)
            if self.hidden_readers(logits) and not self.cautious:
                raise _HiddenReaders
            self._verify(logits)
            self._settle_merges(logits)
            self._settle_chains()
            grad_output = grad_output_fn(logits)
            if not logits.requires_grad:  # the output does not depend on the inputs
                if status is not None:
                    status["connected"] = False
                return tuple(torch.zeros_like(x) for x in leaves)
            try:
                rels = torch.autograd.grad(logits, leaves, grad_output, allow_unused=True)
            except RuntimeError as error:
                message = str(error)
                if "heckpoint" in message and ".grad()" in message:  # (the wording varies across torch releases)
                    raise UnsupportedModel("it uses torch.utils.checkpoint with use_reentrant=True, whose backward "
                                           "re-runs the forward and cannot run inside torch.autograd.grad; "
                                           "checkpoint with use_reentrant=False instead") from error
                if "_InputPoint" in message:
                    raise UnsupportedModel(self._changed_input()) from error
                raise
        finally:  # everything this pass changed on the model is undone here
            restore_all(self.parameter_writes.restore)  # (also where Ctrl-C lands in it; the rest the guard restores)
            for handle in handles:
                handle.remove()
            for module in in_place:
                module.inplace = True
            for point in itertools.chain(self.points.values(), self.registered):  # point -> result -> its autograd
                point.result = point.inp = point.z = point.fused = point.alias = point.node = None  # node -> point
                point.operands = None
            self.registered.clear()
            self.sum_operands.clear()
            for handle in self.output_hooks:  # (a freed result's id may have been taken by a later point)
                handle.remove()
            self.output_hooks.clear()
            self.points.clear()
            self.storages.clear()
            self.flat_nodes.clear()
            self.read_inputs.clear()
            self.view_points.clear()
            self.view_bases.clear()
            self.copies.clear()
        if status is not None:
            status["connected"] = any(r is not None for r in rels)
        return tuple(torch.zeros_like(x) if r is None else r for x, r in zip(leaves, rels))


def fast_relevance(
    model: nn.Module,
    leaves: tuple[Tensor, ...],
    call: Callable[[], Tensor],
    grad_output_fn: Callable[[Tensor], Tensor],
    epsilon: float,
    types: RuleTypes | None = None,
    modules: Sequence[nn.Module] | None = None,
    hints: dict | None = None,
    status: dict | None = None,
) -> tuple[Tensor, ...]:
    """Relevance of each of ``leaves`` (tensors requiring grad that ``call()`` feeds to the model).

    ``grad_output_fn(logits)`` gives the output relevance. The model must be in eval mode inside a
    :func:`preserved_model_state` block, with parameters not requiring gradients
    (:func:`._rules.inputs_only_carry_relevance`). ``types`` (e.g. kept by the caller across calls: it caches each
    class's rule) and ``modules`` (``model.modules()``) are computed when not given. ``hints``: a dict the caller
    keeps for this model (what the engine learnt of its forward: whether its ReLU outputs may stand in for their
    layers' outputs, see :meth:`_Engine._relu_hook`; a speed hint only, every pass is checked); ``None``: no ReLU
    stands in (one forward whatever the model, e.g. for a CUDA graph capture). ``status``: a dict that gets
    ``"connected"``, whether the backward reached any leaf (``False``: the output has no autograd path to the inputs,
    and the relevance is all zero).
    """
    types = rule_types() if types is None else types
    modules = tuple(model.modules()) if modules is None else modules
    speculate, views = hints is not None and hints.get("relu", True), frozenset()
    cautious = hints is None or hints.get("hidden", False)
    while True:
        try:
            return _Engine(model, epsilon, types, modules, speculate=speculate and not cautious, function_views=views,
                           cautious=cautious).run(leaves, call, grad_output_fn, status)
        except _HiddenReaders:
            if cautious:  # (cannot happen: a cautious pass counts them and goes on)
                raise
            cautious = True  # this model's forward reads values unseen: cautious from here on
            if hints is not None:
                hints["hidden"] = True
        except _Misjudged:
            if not speculate:  # (cannot happen: only a standing-in ReLU output raises it)
                raise
            hints["relu"] = speculate = False  # this model's forward says no: do not try it again on the next calls
        except _ViewsChanged as error:
            if error.modules <= views:  # (cannot happen: those get the Function)
                raise
            views = views | error.modules
