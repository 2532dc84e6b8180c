"""The zennit reference backend: zennit composites by name, with the canonizers and rules a model needs.

For ``"epsilon_flat"`` the backend computes the semantics of :mod:`._rules` with zennit's own hooks:

- BatchNorm is merged by zennit's ``MergeBatchNorm`` into the linear layer whose output it normalises, found
  in *execution* order by a probe forward (zennit's ``SequentialMergeBatchNorm`` pairs by module order, which
  merges the wrong layers in DenseNet or in a block registered as conv, bn, relu but run as conv, relu, bn);
- every sum of two relevance-carrying tensors runs through a fresh ``zennit.layer.Sum`` module with zennit's
  ``Norm`` rule (as zennit's ResNet canonizer does, for any model); so do the sums of the other composites given by
  name whose rules give ``Sum`` one (``Norm`` in all of zennit's LRP composites), not those of the gradient-based
  ones (``guided_backprop``, ``deconvnet``, ``beta_smooth``), whose adds pass the gradient on;
- PyG ``MeanAggregation``/``SumAggregation`` get zennit's ``Norm``, re-run with all their arguments.

zennit's hooks keep one input per module, so a module with an Epsilon/Flat/Norm rule (any rule that keeps its
call's values, also ``ReLUBetaSmooth``, and also in a ``Composite`` object) that runs more than once in a forward
cannot be explained by it: the backend refuses it (``backend="fast"`` handles it).
"""

from __future__ import annotations

import contextlib
import inspect
import pickle
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._rules import (
    COPY_NAMES, NO_READ_NAMES, NORM_STABILIZER, ExplanationError, RuleTypes, computed_weight, first_linear, has_tensor,
    keyword_input_problem, relevance_add, rule_types, stabilize, transformed_input_problem,
)
from ._state import operation_name

__all__ = ["EPSILON_FLAT", "composite_names", "make_zennit_composite", "zennit_relevance"]

EPSILON_FLAT = "epsilon_flat"


def composite_names() -> list[str]:
    """Names accepted as ``composite=``: the paper's ``"epsilon_flat"`` and zennit's registry."""
    from zennit.composites import COMPOSITES

    return [EPSILON_FLAT, *sorted(COMPOSITES)]


class _Probe(TorchFunctionMode):
    """What one plain forward shows: which linear layer each BatchNorm normalises (a BatchNorm merges into the
    layer whose output it alone reads: merging the weights would change what another reader sees), and how
    often rule modules run."""

    def __init__(self, model: nn.Module, types: RuleTypes) -> None:
        super().__init__()
        self.types = types
        self.calls: dict[nn.Module, int] = {}
        self._candidates: dict[nn.Module, tuple[nn.Module, Tensor]] = {}
        self._produced: dict[int, tuple[nn.Module, Tensor, int]] = {}  # id(output) -> (layer, output, version)
        # id(copy of a layer's output) -> the tensors from the output to the copy: a BatchNorm reading the copy merges
        # where each of them is read once (by the next): `.contiguous()` in channels_last, `.float()` under autocast
        self._copied: dict[int, tuple[Tensor, ...]] = {}
        self._uses: dict[int, int] = {}
        self.parameter_reads: dict[int, int] = {}  # id(Parameter) -> operations reading it (the probe's lifetime)
        self._handles = []
        self.problem: str | None = None
        self.reweighted: set[nn.Module] = set()  # linear layers whose forward transforms their weight (_reweighted)
        hooks = {"linear": self._linear, "norm": self._linear, "batchnorm": self._batchnorm,
                 "activation": self._activation}
        for module in model.modules():
            hook = hooks.get(types.kind(module))
            if hook is not None:  # a layer's own output: before any forward hook of the caller's may change it
                self._handles.append(module.register_forward_hook(hook, prepend=hook == self._linear))

    def _activation(self, module, args, out) -> None:
        if self.problem is None and args and isinstance(args[0], Tensor) and (
                not isinstance(out, Tensor) or out.shape != args[0].shape):
            self.problem = f"the Pass rule needs an elementwise {type(module).__name__}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        # a reader (not a size query, nor an operation that returns its input itself: dropout in eval mode; one that
        # changed it in place is seen by the version check of _batchnorm)
        if has_tensor(result) and operation_name(func) not in NO_READ_NAMES \
                and not (args and result is args[0]):
            for arg in args:
                for tensor in arg if isinstance(arg, (tuple, list)) else (arg,):
                    if isinstance(tensor, nn.Parameter):
                        self.parameter_reads[id(tensor)] = self.parameter_reads.get(id(tensor), 0) + 1
                    elif isinstance(tensor, Tensor) and id(tensor) in self._produced:
                        self._uses[id(tensor)] = self._uses.get(id(tensor), 0) + 1
            source = args[0] if args else None
            if isinstance(source, Tensor) and isinstance(result, Tensor) and operation_name(func) in COPY_NAMES \
                    and id(source) in self._produced and self._produced[id(source)][1] is source \
                    and result.shape == source.shape and result.is_floating_point():
                self._produced[id(result)] = (self._produced[id(source)][0], result, result._version)
                self._copied[id(result)] = (*self._copied.get(id(source), ()), source)
        return result

    def shared_parameter(self, linear: nn.Module) -> str | None:
        """The name of ``linear``'s weight or bias if the forward read it in more than one operation (a layer that
        runs once reads each once: a tied weight, or one a forward also reads functionally); else ``None``."""
        for name in ("weight", "bias"):
            value = linear._parameters.get(name)
            if value is not None and self.parameter_reads.get(id(value), 0) > 1:
                return name
        return None

    def _linear(self, module, args, out) -> None:
        if not args and self.problem is None:
            self.problem = keyword_input_problem(module)
        if args and self.problem is None:
            self.problem = transformed_input_problem(module, args[0])
        if not isinstance(out, Tensor) and self.problem is None:  # (zennit's rule raised an AttributeError)
            self.problem = f"a {type(module).__name__} returned a {type(out).__name__}, not a tensor"
        self.calls[module] = self.calls.get(module, 0) + 1
        if isinstance(out, Tensor) and self.types.kind(module) == "linear":
            self._produced[id(out)] = (module, out, out._version)
            if _reweighted(module, args, out):
                self.reweighted.add(module)

    def _batchnorm(self, module, args, out) -> None:
        source = self._produced.get(id(args[0])) if args else None
        # (not changed since: in place by a caller's hook, or by an in-place activation the BatchNorm follows)
        candidate = source[:2] if source is not None and source[1] is args[0] and args[0]._version == source[2] \
            else (None, None)
        if self._candidates.get(module, candidate)[0] is not candidate[0]:  # called twice, after different layers
            candidate = (None, None)  # (or once after none): zennit merges a BatchNorm into one layer's weights
            if self.problem is None:
                self.problem = (f"the {type(module).__name__} runs after different layers in one forward, and zennit's "
                                "MergeBatchNorm merges a BatchNorm into one layer's weights; use backend='fast' (or "
                                "'auto'), which merges it at each call")
        self._candidates[module] = candidate

    def pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(linear, bn) for bn, (linear, out) in self._candidates.items()
                if linear is not None and all(self._uses.get(id(tensor), 0) == 1
                                              for tensor in (*self._copied.get(id(out), ()), out))]

    def feature_dims(self) -> dict[nn.Module, int]:
        """The number of dimensions of each merge candidate's output (a Linear's features are its last one)."""
        return {linear: out.ndim for linear, out in self._candidates.values() if linear is not None}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _probe(model: nn.Module, call: Callable[[], Tensor], types: RuleTypes) -> tuple[list, dict, dict, set, dict]:
    """``(BatchNorm pairs, calls per rule module, output dimensions of merge candidates, layers computing from a
    transformed weight, the merge targets whose weight or bias other operations read too -> its name)`` from one
    forward without gradients."""
    probe = _Probe(model, types)
    try:
        with torch.no_grad(), probe:
            call()
        if probe.problem is not None:
            raise ExplanationError(f"this {type(model).__name__} cannot be explained with LRP: {probe.problem}.")
        pairs = probe.pairs()
        shared = {linear: name for linear, _ in pairs if (name := probe.shared_parameter(linear)) is not None}
        return pairs, probe.calls, probe.feature_dims(), probe.reweighted, shared
    finally:
        probe.close()
        probe._produced.clear()
        probe._candidates.clear()


@contextlib.contextmanager
def _registered(zennit_composite, model: nn.Module) -> Iterator[None]:
    """``zennit_composite.context(model)``, with a failure of zennit's own registration (its canonizers: e.g. the
    BatchNorm merge of a grouped transposed convolution) said as a ``ValueError`` (whatever it registered before
    failing is undone by :func:`preserved_model_state`)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(zennit_composite.context(model))
        except (AttributeError, RuntimeError, TypeError, IndexError) as error:
            raise ExplanationError(f"backend='zennit' cannot apply its rules to this {type(model).__name__}: zennit "
                                   f"failed while registering them ({type(error).__name__}: {error}). Use "
                                   "backend='fast' (or 'auto').") from error
        yield


def _merge_batchnorm(pairs: list[tuple[nn.Module, nn.Module]]):
    """zennit's ``MergeBatchNorm`` for the given (linear, BatchNorm) pairs, the merged BatchNorm an exact identity.

    After merging, zennit 0.5.1 leaves the BatchNorm computing ``z / sqrt(1 + eps)`` (running_var = 1, eps kept):
    a systematic 1e-6..1e-2 deviation from merged LRP that grows with depth. zennit 1.0.0 sets ``eps = 0``
    instead, which some torch builds refuse ("batch_norm eps must be positive"). Here the BatchNorm keeps its
    positive eps and gets ``running_var = 1 - eps``, so that it divides by ``sqrt(1) = 1``. Both releases restore
    the original tensors and eps on removal (and :func:`preserved_model_state` checks that they did).
    """
    from zennit.canonizers import MergeBatchNorm

    class ExecutionOrderMergeBatchNorm(MergeBatchNorm):
        def apply(self, root_module):
            instances = []
            for linear, batch_norm in pairs:
                instance = self.copy()
                instance.register((linear,), batch_norm)
                instances.append(instance)
            return instances

        def register(self, linears, batch_norm):
            eps = batch_norm.eps
            biasless = [linear for linear in linears if linear.bias is None]
            super().register(linears, batch_norm)
            # zennit's new bias (a Parameter of zeros) requires grad, where no parameter does while attributing:
            # else a branch that does not depend on the inputs (a bias-free layer + BatchNorm on a constant) would
            # seem to carry relevance, and get Norm at an add
            for linear in biasless:
                if linear.bias.is_leaf:  # zennit 0.5: the Parameter itself
                    linear.bias.requires_grad_(False)
                else:  # zennit >= 1.0: a tensor computed from it, set with object.__setattr__ (and so restored)
                    object.__setattr__(linear, "bias", linear.bias.detach())
            unit_variance = torch.ones_like(batch_norm.running_var) - eps
            if batch_norm.eps == 0:  # zennit >= 1.0 sets attributes with object.__setattr__ and restores them so
                object.__setattr__(batch_norm, "eps", eps)
                object.__setattr__(batch_norm, "running_var", unit_variance)
            else:  # zennit 0.5 swaps .data and restores it
                batch_norm.running_var.data = unit_variance

    return ExecutionOrderMergeBatchNorm()


def _aggregation_norm():
    """zennit's ``Norm`` for PyG aggregations, which take more arguments than the input (zennit's hooks re-run a
    module with its first input only)."""
    from zennit.core import RemovableHandle, RemovableHandleList
    from zennit.rules import Norm

    class AggregationNorm(Norm):
        def register(self, module):
            return RemovableHandleList([
                RemovableHandle(self),
                module.register_forward_pre_hook(self.pre_forward),
                module.register_forward_hook(self.post_forward),
                module.register_forward_hook(self.store, with_kwargs=True),
            ])

        def store(self, module, args, kwargs, output):
            self.stored_tensors["input"] = args
            self.stored_tensors["kwargs"] = kwargs

        def backward(self, module, grad_input, grad_output):
            args, kwargs = self.stored_tensors["input"], self.stored_tensors["kwargs"]
            x = args[0].clone().requires_grad_()
            with torch.enable_grad():
                z = module.forward(x, *args[1:], **kwargs)
            (gradient,) = torch.autograd.grad(z, x, grad_output[0] / stabilize(z, NORM_STABILIZER))
            relevance = x * gradient
            return tuple(relevance if index == 0 else None for index in range(len(grad_input)))

        def copy(self):
            return AggregationNorm()

    return AggregationNorm()


def epsilon_flat(epsilon: float, canonizers: list, types: RuleTypes):
    """The paper's composite: Flat on the first linear layer, Epsilon on the others, Pass on activations and
    unmerged BatchNorm, Norm on average pooling, PyG mean/sum aggregations and ``Sum`` modules."""
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import Epsilon, Flat

    aggregations = tuple(t for t in types.norm if t.__module__.startswith("torch_geometric"))
    layer_map = layer_map_base()
    if aggregations:
        layer_map.append((aggregations, _aggregation_norm()))
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map + [(types.linear, Epsilon(epsilon=epsilon))],
        first_map=[(types.linear, Flat())],
        canonizers=canonizers,
    )


def make_zennit_composite(composite, inputs: Tensor, epsilon: float, canonizers: list, types: RuleTypes):
    """A zennit ``Composite`` for ``composite`` (a name or a ``Composite``, returned as given)."""
    from zennit.composites import COMPOSITES
    from zennit.core import Composite

    if isinstance(composite, Composite):
        return composite
    check_composite(composite)
    if composite == EPSILON_FLAT:
        return epsilon_flat(epsilon, canonizers, types)
    cls = COMPOSITES[composite]
    accepted = inspect.signature(cls).parameters
    kwargs = {"canonizers": canonizers}
    if "epsilon" in accepted:
        kwargs["epsilon"] = epsilon
    if _boxed(composite):
        # Box bounds for the first layer: each sample's own value range (the batch's made a sample's relevance depend
        # on the others, and on which samples the coins selected). Fixed bounds (the data's domain, per channel
        # after Normalize): pass the zennit Composite itself, e.g. EpsilonGammaBox(low=..., high=...)
        rows = inputs.detach().flatten(1) if inputs.ndim > 1 else inputs.detach()[:, None]
        shape = (inputs.shape[0], *([1] * (inputs.ndim - 1)))
        kwargs["low"] = rows.amin(1).view(shape).expand_as(inputs)
        kwargs["high"] = rows.amax(1).view(shape).expand_as(inputs)
    return cls(**kwargs)


def _boxed(composite) -> bool:
    """Whether the composite named ``composite`` takes box bounds (``low``, ``high``: see
    :func:`make_zennit_composite`)."""
    from zennit.composites import COMPOSITES

    cls = COMPOSITES.get(composite) if isinstance(composite, str) else None
    return cls is not None and {"low", "high"} <= set(inspect.signature(cls).parameters)


def check_composite(composite) -> None:
    """A ``TypeError``/``ValueError`` unless ``composite`` is a known name or a zennit ``Composite``."""
    from zennit.composites import COMPOSITES
    from zennit.core import Composite

    if isinstance(composite, Composite):
        return
    if not isinstance(composite, str):
        raise TypeError(
            f"composite should be a name ({', '.join(composite_names())}) or a zennit Composite, "
            f"but got {type(composite).__name__}."
        )
    if composite != EPSILON_FLAT and composite not in COMPOSITES:
        raise ValueError(f"composite should be one of {composite_names()}, but got {composite!r} instead.")


def check_picklable(composite) -> None:
    """A ``TypeError`` saying what to do when a zennit ``Composite`` object does not pickle (zennit's rules hold
    lambdas), instead of pickle's ``Can't pickle local object 'Flat.__init__.<locals>.<lambda>'``."""
    if isinstance(composite, str):
        return
    try:
        pickle.dumps(composite)
    except (AttributeError, TypeError, pickle.PicklingError) as error:
        from zennit.composites import COMPOSITES

        names = [name for name, kind in COMPOSITES.items() if type(composite) is kind]
        by_name = f"composite={names[0]!r}" if names else "a composite name"
        raise TypeError(
            f"this Attributor (or the transform holding it) cannot be pickled: its zennit "
            f"{type(composite).__name__} object does not pickle ({error}). Give it by name instead ({by_name}: "
            "built at each call with the Attributor's epsilon and canonizers), which pickles; a copy.deepcopy "
            "works either way."
        ) from error


class _NormSums(TorchFunctionMode):
    """Runs every sum of two relevance-carrying tensors (outside modules with rules) through a fresh
    ``zennit.layer.Sum`` with zennit's ``Norm`` rule."""

    def __init__(self, model: nn.Module, types: RuleTypes) -> None:
        super().__init__()
        self.depth = 0
        self.handles = []
        for module in model.modules():
            if types.kind(module) is not None:  # any rule module
                self.handles.append(module.register_forward_pre_hook(self._enter))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, module, args) -> None:
        self.depth += 1

    def _leave(self, module, args, out) -> None:
        self.depth -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        added = relevance_add(func, args, kwargs) if self.depth == 0 else None
        if added is None:
            return func(*args, **(kwargs or {}))
        from zennit.layer import Sum
        from zennit.rules import Norm

        a, b, in_place = added
        module = Sum()
        self.handles.append(Norm().register(module))
        total = module(torch.stack(torch.broadcast_tensors(a, b), dim=-1))
        if in_place:
            a.copy_(total)  # autograd: a's new value comes from the Sum only
            return a
        return total

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _zennit_sum() -> nn.Module:
    from zennit.layer import Sum

    return Sum()


def _rule_of(zennit_composite, name: str, module: nn.Module):
    """The rule (a zennit hook template) that ``zennit_composite`` gives ``module`` registered as the only module of
    its kind (``None``: none; also for a composite that has no ``module_map``)."""
    module_map = getattr(zennit_composite, "module_map", None)
    return module_map({}, name, module) if callable(module_map) else None


def _keeps_values(rule) -> bool:
    """Whether a zennit rule keeps what a call of its module computed for the backward (a ``BasicHook``: the input,
    to re-run the module; a hook with a forward of its own, e.g. ``ReLUBetaSmooth``: the input), so that a second
    call of the module in one forward overwrites the first one's. Pass and the gradient-modifying ReLU rules use the
    gradients alone."""
    from zennit.core import BasicHook, Hook

    if isinstance(rule, BasicHook) or not isinstance(rule, Hook):
        return True
    kind = type(rule)
    return kind.forward is not Hook.forward or kind.pre_forward is not Hook.pre_forward \
        or kind.post_forward is not Hook.post_forward


class _Repeats:
    """Counts, during the zennit pass, the calls of each module whose rule keeps its call's values
    (:func:`_keeps_values`): the rules as the registered composite gives them (after its canonizers, in
    registration order), also for a ``Composite`` object. Refuses, before zennit's hooks see it, a call of a module
    with a rule whose positional arguments are not all tensors (``ConvTranspose2d(x, output_size)``): zennit's
    hooks clone every one of them."""

    def __init__(self, model: nn.Module, zennit_composite, composite) -> None:
        self.model, self.composite = model, composite  # (composite: as the caller named it, for the advice)
        self.calls: dict[nn.Module, int] = {}
        self.watched: list[nn.Module] = []
        self.ruled: dict[nn.Module, str] = {}
        module_map = getattr(zennit_composite, "module_map", None)
        if callable(module_map):
            ctx: dict = {}
            for name, module in model.named_modules():
                rule = module_map(ctx, name, module)
                if rule is not None:
                    self.ruled.setdefault(module, name)
                    if _keeps_values(rule):
                        self.watched.append(module)
        self.handles: list = []

    def _count(self, module: nn.Module, args) -> None:
        self.calls[module] = self.calls.get(module, 0) + 1

    def _check_args(self, module: nn.Module, args) -> None:
        other = next((arg for arg in args if not isinstance(arg, Tensor)), None)
        if other is not None and args and isinstance(args[0], Tensor) and args[0].requires_grad:
            raise ExplanationError(
                f"backend='zennit' cannot explain this {type(self.model).__name__}: module "
                f"{self.ruled[module] or 'model'!r} ({type(module).__name__}) is called with a positional argument "
                f"that is not a tensor ({type(other).__name__}), and zennit's rule hooks take every positional "
                "argument for a tensor. " + _fast_advice(self.composite, ", which takes the call as it is")
            )

    def __enter__(self) -> None:
        self.handles = [module.register_forward_pre_hook(self._check_args, prepend=True) for module in self.ruled]
        self.handles += [module.register_forward_pre_hook(self._count) for module in self.watched]

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _refuse_repeated(model: nn.Module, calls: dict, composite) -> None:
    """An ``ExplanationError`` for the first module of ``model`` that ``calls`` counts more than once."""
    for name, module in model.named_modules():
        count = calls.get(module, 0)
        if count > 1:
            raise ExplanationError(
                f"backend='zennit' cannot explain this {type(model).__name__}: module {name or 'model'!r} runs "
                f"{count} times in one forward, and zennit's rules keep one input per module. "
                + _fast_advice(composite, ", which applies the rules to every call")
            )


def _fast_advice(composite, more: str = "") -> str:
    """What to use where the zennit backend refuses a model: the fast engine, where it computes ``composite``."""
    if isinstance(composite, str) and composite == EPSILON_FLAT:
        return f"Use backend='fast' (or 'auto'){more}."
    return (f"The fast engine computes {EPSILON_FLAT!r} only: use composite={EPSILON_FLAT!r} with backend='fast' (or "
            "'auto'), or change the model.")


def _reweighted(module: nn.Module, args: tuple, out) -> bool:
    """Whether a subclass of torch's ``Linear`` / convolutions computes ``out`` otherwise than torch's class does with
    the module's own weight and bias (weight standardisation in its ``forward`` or ``_conv_forward``): zennit's
    MergeBatchNorm writes into that weight Parameter, which such a forward transforms. Checked by computing torch's
    own (unseen by the probe); subclasses that only add to the call (logging, casts) compute the same."""
    if type(module).__module__.startswith("torch.") or not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) \
            or not args or not isinstance(args[0], Tensor) or not isinstance(out, Tensor):
        return False
    base = next(cls for cls in type(module).__mro__ if cls.__module__.startswith("torch."))
    weight, bias = module._parameters.get("weight"), module._parameters.get("bias")
    if not isinstance(weight, Tensor):
        return False  # (a computed weight: refused as such)
    with torch._C.DisableTorchFunction():
        try:
            if isinstance(module, nn.Linear):
                own = nn.functional.linear(args[0], weight, bias)
            elif isinstance(module, nn.modules.conv._ConvTransposeNd):
                own = base.forward(module, *args)
            else:
                own = base._conv_forward(module, args[0], weight, bias)
        except (RuntimeError, TypeError, ValueError):  # (another signature: not a plain layer)
            return True
        return own.shape != out.shape or not torch.allclose(own.to(out.dtype), out, rtol=1e-5, atol=1e-6)


def _merge_problem(linear: nn.Module, batch_norm: nn.Module, out_ndim: int | None, reweighted: bool = False,
                   shared: str | None = None) -> str | None:
    """Why zennit's ``MergeBatchNorm``, which writes the BatchNorm (normalising dimension 1) into the layer's weight
    Parameter along its output features, cannot fold ``batch_norm`` into ``linear``; ``None`` when it can.
    ``shared``: the name of the layer's Parameter that other operations of the forward read too."""
    if computed_weight(linear):
        return ("the layer's weight is computed (a parametrization, or a weight_norm / spectral_norm hook), and "
                "zennit's MergeBatchNorm writes into a weight Parameter")
    computed = [f"the {owner}'s {name}" for owner, module, name in (("layer", linear, "bias"),
                                                                    ("BatchNorm", batch_norm, "bias"),
                                                                    ("BatchNorm", batch_norm, "weight"))
                if computed_weight(module, name)]
    if computed:
        return (f"{' and '.join(computed)} {'is' if len(computed) == 1 else 'are'} computed (a parametrization), and "
                "zennit's MergeBatchNorm reads and writes the Parameters themselves, which the forward does not use "
                "as they are")
    if reweighted:
        base = next(cls for cls in type(linear).__mro__ if cls.__module__.startswith("torch.")).__name__
        return (f"the layer's class {type(linear).__name__} computes its output otherwise than torch's {base} with "
                "the same weight and bias (from a transformed weight, e.g. weight standardisation, or with padding of "
                "its own, e.g. timm's Conv2dSame), and zennit's MergeBatchNorm writes the BatchNorm into the weight "
                "Parameter, which such a forward may not use as torch's layer does")
    if shared is not None:
        return (f"the layer's {shared} Parameter is read elsewhere in the forward too (a tied or shared weight, or "
                "one read functionally), and zennit's MergeBatchNorm writes the BatchNorm into it, which would change "
                "what the other reader computes")
    weight = getattr(linear, "weight", None)
    if isinstance(weight, Tensor):
        transposed = isinstance(linear, nn.modules.conv._ConvTransposeNd)
        if transposed and linear.groups > 1:
            return f"zennit's merge does not handle a grouped transposed convolution (groups={linear.groups})"
        if not isinstance(linear, nn.modules.conv._ConvNd) and out_ndim is not None and out_ndim != 2:
            return (f"the layer maps the last dimension of a {out_ndim}-d tensor, while the BatchNorm normalises "
                    "dimension 1: zennit would scale the layer's outputs along the wrong axis")
        features = weight.shape[1] * linear.groups if transposed else weight.shape[0]
        if features != getattr(batch_norm, "num_features", features):
            return (f"the layer has {features} output features and the BatchNorm {batch_norm.num_features} channels "
                    "(it normalises another axis)")
    if batch_norm.weight is None or batch_norm.bias is None:
        return "zennit's MergeBatchNorm needs its affine parameters, and it has none (affine=False)"
    return None


def zennit_relevance(
    model: nn.Module,
    leaves: tuple[Tensor, ...],
    call: Callable[[], Tensor],
    grad_output_fn: Callable[[Tensor], Tensor],
    composite,
    epsilon: float,
    types: RuleTypes | None = None,
    status: dict | None = None,
) -> tuple[Tensor, ...]:
    """Relevance of each of ``leaves`` computed by zennit (inside :func:`preserved_model_state`, in eval mode,
    parameters not requiring gradients). Raises ``ValueError`` for a model zennit's hooks cannot explain.
    ``types``: kept by the caller across calls (it caches each class's rule), or made here. ``status``: a dict that
    gets ``"connected"``, whether the backward reached any leaf (as :func:`._fast.fast_relevance`)."""
    from zennit.core import Composite

    types = rule_types() if types is None else types
    custom = isinstance(composite, Composite)
    canonizers = []
    if not custom:
        # (each call() feeds its own copies of the leaves)
        pairs, calls, dims, reweighted, shared_parameters = _probe(model, call, types)
        names = {module: name for name, module in model.named_modules()}
        first = first_linear(model, types) if composite == EPSILON_FLAT else None
        if first is not None and computed_weight(first):
            raise ExplanationError(
                f"backend='zennit' cannot apply Flat to the first layer, {type(first).__name__} "
                f"{names.get(first, '')!r}: its weight is computed (a parametrization, or a weight_norm / "
                "spectral_norm hook), and zennit's Flat sets the layer's own weight Parameter to ones, which it does "
                "not read. Use backend='fast' (or 'auto')."
            )
        if first is not None and getattr(first, "bias", None) is not None and computed_weight(first, "bias"):
            raise ExplanationError(
                f"backend='zennit' cannot apply Flat to the first layer, {type(first).__name__} "
                f"{names.get(first, '')!r}: its bias is not a Parameter of its own (a parametrization, a buffer or a plain "
                "tensor attribute), and zennit's Flat zeroes the layer's own bias Parameter only, so that the bias "
                "would stay in Flat's counts. Use backend='fast' (or 'auto')."
            )
        for linear, batch_norm in pairs:
            problem = _merge_problem(linear, batch_norm, dims.get(linear), linear in reweighted,
                                     shared_parameters.get(linear))
            if problem is not None:
                raise ExplanationError(
                    f"backend='zennit' cannot merge {type(batch_norm).__name__} {names.get(batch_norm, '')!r} into "
                    f"{type(linear).__name__} {names.get(linear, '')!r}: {problem}. "
                    + _fast_advice(composite, ", which merges any BatchNorm that alone reads a linear layer's output")
                )
        canonizers = [_merge_batchnorm(pairs)]
    zennit_composite = make_zennit_composite(composite, leaves[0], epsilon, canonizers, types)
    if not custom:  # (before zennit's pass: a module whose rule keeps its call's values may run once; the
        _refuse_repeated(model, {module: count for module, count in calls.items()  # gradient-based rules may repeat)
                                 if (rule := _rule_of(zennit_composite, names.get(module, ""), module)) is not None
                                 and _keeps_values(rule)}, composite)
    # (by name: Norm at every sum, where the composite gives zennit's Sum a rule; gradient-based ones do not)
    sums = None if custom or _rule_of(zennit_composite, "", _zennit_sum()) is None else _NormSums(model, types)
    try:
        with _registered(zennit_composite, model):
            repeats = _Repeats(model, zennit_composite, composite)
            with sums if sums is not None else contextlib.nullcontext(), repeats:
                try:
                    logits = call()
                except AttributeError as error:  # zennit's hooks: a rule module's output without a graph
                    if "register_hook" not in str(error):
                        raise
                    raise ExplanationError(
                        f"backend='zennit' cannot explain this {type(model).__name__}: a module with a rule ran "
                        "with gradients disabled on an input that carries relevance (torch.no_grad inside the "
                        "forward, or torch.utils.checkpoint with use_reentrant=True), which zennit's hooks cannot "
                        f"follow ({error}). A checkpoint: use use_reentrant=False (neither backend runs a "
                        "reentrant checkpoint's backward inside torch.autograd.grad). A no_grad section: "
                        + _fast_advice(composite, ", which follows it")
                    ) from error
            _refuse_repeated(model, repeats.calls, composite)
            grad_output = grad_output_fn(logits)
            if not logits.requires_grad:  # the output does not depend on the inputs
                if status is not None:
                    status["connected"] = False
                return tuple(torch.zeros_like(x) for x in leaves)
            try:
                rels = torch.autograd.grad(logits, leaves, grad_output, allow_unused=True)
            except RuntimeError as error:  # (the forward ran: zennit's rules re-run modules in the backward)
                if not custom and _boxed(composite) and "Invalid shape" in str(error):  # zennit's ZBox bounds
                    first = first_linear(model, types)
                    layer = "" if first is None else \
                        f" ({type(first).__name__} {({m: n for n, m in model.named_modules()}.get(first, ''))!r})"
                    raise ExplanationError(
                        f"backend='zennit' cannot apply {composite!r} to this {type(model).__name__}: the box bounds "
                        f"by name are each sample's value range shaped like the model's input "
                        f"{tuple(leaves[0].shape)}, and zennit's ZBox rule on the first layer{layer} needs them "
                        "shaped like that layer's own input, which the "
                        f"forward makes otherwise ({error}). Pass the zennit Composite with bounds of that layer's "
                        "input shape (e.g. EpsilonGammaBox(low=..., high=...)), or use another composite."
                    ) from error
                raise ExplanationError(f"backend='zennit' failed to compute the relevance of this "
                                       f"{type(model).__name__} ({error}). " + _fast_advice(composite)) from error
            except KeyError as error:  # zennit's rule never received its output's gradient
                if "grad_output" not in str(error):
                    raise
                raise ExplanationError(
                    f"backend='zennit' cannot explain this {type(model).__name__}: the forward changes the output of "
                    "a module with a rule in place where that output is a view (e.g. h.relu_() after an nn.Linear "
                    "on (B, T, C) tokens), which hides its gradient from zennit's hooks. "
                    + _fast_advice(composite, ", or change it out of place")
                ) from error
    finally:
        if sums is not None:
            sums.close()
    if status is not None:
        status["connected"] = any(r is not None for r in rels)
    # an input the output does not depend on has zero relevance
    return tuple(torch.zeros_like(x) if r is None else r for x, r in zip(leaves, rels))
