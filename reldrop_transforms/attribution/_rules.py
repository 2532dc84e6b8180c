"""What the paper's composite does at each operation: shared by the fast engine and the zennit backend.

The reference semantics (``composite="epsilon_flat"``) are zennit's, written out:

- **Flat** on the first linear layer in module order (zennit's ``SpecialFirstLayerMapComposite``): a
  ``Linear``/``Conv``/``ConvTranspose`` of any groups, dilation or padding, or ``torch_geometric.nn.Linear``; at
  each of its calls on the input (also one per sample), not at a call on what derives from its own output
  (``a(relu(a(x)))``: Epsilon there, as on the unrolled model);
- **Epsilon** (``epsilon``) on every other linear layer;
- **BatchNorm merged** into the linear layer whose output it normalises, found in *execution* order (the
  BatchNorm's input is that layer's output, and nothing else reads that output: merging the weights would change
  what another reader sees; an operation that returns its input itself, such as dropout in eval mode, reads
  nothing); an unmerged BatchNorm (one that follows no linear layer, such as the second of two in a row) gets
  **Pass**, as in zennit's composite;
- **Pass** on the activations of ``zennit.types.Activation`` (relevance handed on unchanged);
- **Norm** (Epsilon with stabiliser 1e-6 and no parameters) on average pooling, on PyG ``MeanAggregation`` /
  ``SumAggregation``, on ``zennit.layer.Sum``, and on every sum of two tensors that both carry relevance
  (``a + b``, ``a += b`` / ``add_``, ``torch.add``): residual adds in any model, as zennit's ResNet canonizer does
  for torchvision ResNets (a scaled sum, ``torch.add(a, b, alpha=2)``, is arithmetic);
- every other operation (gates ``x * s``, LayerNorm, arithmetic, indexing, coordinate differences, scatter and
  max pooling, concatenation, channel shuffles, activations zennit does not list such as ``Mish``) passes
  relevance on through its ordinary backward, as zennit does for operations it has no rule for.

Activations built with ``inplace=True`` never change their input during attribution, as in zennit (whose hooks
run every module on a clone of its input): where a forward reads an activation's input again after the activation,
it reads the old values there (the caller's own model reads the activation's output: the logits explained are then
those of the model with the activation out of place, with both backends). Nor does attribution change the caller's
batch: the attributed inputs are copies.

A tensor *carries relevance* when it depends on the attributed inputs: during attribution the model's parameters
do not require gradients, so that is exactly ``requires_grad``. Rules apply only where a module's first input
carries relevance (as zennit's hooks).

Where the first layer's weight is computed (a ``torch.nn.utils.parametrize`` parametrization such as
``parametrizations.weight_norm`` / ``spectral_norm``, or the older hook-based ``weight_norm`` / ``spectral_norm``),
Flat spreads relevance as the same layer with all-one weights, as on a plain layer: zennit's Flat sets the layer's
own ``weight`` Parameter to ones, which such a layer does not read (zennit then computes the layer's real weights'
rule, not Flat), so the zennit backend refuses it, and so it does a BatchNorm merge into such a layer (zennit's
merge writes into the computed weight, which the next forward recomputes).

Without an LRP rule, and refused by both backends with the module named: ``nn.MultiheadAttention`` (three
inputs and softmax attention; zennit's Pass hook cannot handle it), BatchNorm without running statistics
(in eval mode it normalises with the statistics of the batch, so relevance would leak between samples),
TorchScript or ``torch.compile``'d submodules (their code runs without the Python hooks that apply the rules; a
wholly compiled model is attributed through the eager module under it), and the modules of a converted quantized
model (``torch.ao.nn.quantized``, its dynamic and fused forms: their kernels have no autograd, so no relevance would
reach the input; the float model prepared for quantization is explained as any other).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from ._state import operation_name

__all__ = ["ADD_NAMES", "NO_READ_NAMES", "NORM_STABILIZER", "RuleTypes", "rule_types", "first_linear",
           "explanation_problem", "stabilize", "inputs_only_carry_relevance", "relevance_add", "has_tensor",
           "computed_weight", "ExplanationError"]

NORM_STABILIZER = 1e-6  # zennit's stabiliser for Norm and Flat


class ExplanationError(ValueError):
    """The library's own ``ValueError`` for a model (or a backend) that cannot explain it: what has no LRP rule, what
    zennit's hooks cannot follow. Never the model's own error, which a caller may replace by a clearer one."""

# the names of the operations that may be a sum of two tensors (relevance_add decides)
ADD_NAMES = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})
# Operations that read no values of their tensor arguments (shape, dtype and device only): not readers of a layer's
# output (no more than an operation that returns its input itself, such as dropout in eval mode).
NO_READ_NAMES = frozenset({"new_zeros", "new_ones", "new_empty", "zeros_like", "ones_like", "empty_like",
                           "rand_like", "randn_like", "size", "dim"})
# Operations whose result is a copy of their first argument, the same values up to a cast: a BatchNorm reading such a
# copy of a linear layer's output (and nothing else reading the output or the copy) merges into the layer, as into the
# output itself: `.contiguous()` returns its input itself in one memory format and a copy in another, `.float()`
# likewise under autocast.
COPY_NAMES = frozenset({"contiguous", "clone", "to", "float", "double", "half", "bfloat16", "type", "type_as"})


def transformed_input_problem(module: nn.Module, tensor) -> str | None:
    """Why a rule module's input ``tensor`` cannot be explained: a ``torch.func`` transform's wrapper (the layers run
    inside ``torch.func.vmap`` or ``grad``: their inputs do not require grad there, so no rule would apply and the
    relevance would be the plain gradient); else ``None``."""
    if isinstance(tensor, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(tensor):
        return (f"its {type(module).__name__} runs inside a torch.func transform (vmap, grad, ...), where LRP's rules "
                "cannot see what depends on the input: the relevance would be the plain gradient. Call the layers on "
                "the batch itself (a per-sample vmap is usually the batched forward)")
    return None


def computed_weight(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.weight`` (or its ``name``, e.g. ``"bias"``) is not a Parameter of its own: computed by a
    ``torch.nn.utils.parametrize`` parametrization or the hook-based ``weight_norm`` / ``spectral_norm`` (which set
    a plain tensor attribute before each forward), or held as a buffer. Nothing is computed to tell."""
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(module, name) or isinstance(module.__dict__.get(name), Tensor) \
        or module._buffers.get(name) is not None  # (a frozen layer's tensor held as a buffer)


class RuleTypes:
    """The module types each rule applies to (PyG's, when torch_geometric is imported: a model that uses them has
    imported it, and the core never imports it itself), and each class's rule, looked up once per class
    (zennit's types answer ``isinstance`` in Python)."""

    __slots__ = ("linear", "norm", "activation", "batchnorm", "pyg", "_kinds")

    def __init__(self) -> None:
        from zennit.layer import Sum
        from zennit.types import Activation, AvgPool, BatchNorm, Linear

        self.linear: tuple = (Linear,)
        self.norm: tuple = (AvgPool, Sum)
        self.activation: tuple = (Activation,)
        self.batchnorm: tuple = (BatchNorm,)
        self.pyg = "torch_geometric" in sys.modules
        if self.pyg:
            from torch_geometric.nn import Linear as PygLinear
            from torch_geometric.nn.aggr import MeanAggregation, SumAggregation

            self.linear += (PygLinear,)
            self.norm += (MeanAggregation, SumAggregation)
        self._kinds: dict[type, str | None] = {}

    def kind(self, module: nn.Module) -> str | None:
        """``"activation"``, ``"batchnorm"``, ``"linear"``, ``"norm"`` (in that order of precedence) or ``None``."""
        cls = type(module)
        kind = self._kinds.get(cls, _UNKNOWN)
        if kind is _UNKNOWN:
            kind = self._kinds[cls] = next(
                (name for name, types in (("activation", self.activation), ("batchnorm", self.batchnorm),
                                          ("linear", self.linear), ("norm", self.norm))
                 if issubclass(cls, types)), None)
        return kind

    def current(self) -> bool:
        """Whether these types still describe the process (torch_geometric not imported since)."""
        return self.pyg == ("torch_geometric" in sys.modules)


_UNKNOWN = object()


def rule_types() -> RuleTypes:
    return RuleTypes()


def first_linear(model: nn.Module, types: RuleTypes, modules: Sequence[nn.Module] | None = None) -> nn.Module | None:
    """The layer that gets Flat: the first linear module in module order (as zennit's composite). ``modules``:
    ``model.modules()``, when the caller has them."""
    return next((module for module in (model.modules() if modules is None else modules)
                 if types.kind(module) == "linear"), None)


def keyword_input_problem(module: nn.Module) -> str:
    """Why a rule module called without positional arguments (``conv(input=x)``) cannot get its rule: its hooks see
    the input as the first positional argument only."""
    name = type(module).__name__
    return (f"a {name} was called with its input as a keyword argument ({name.lower()}(input=x)): its rule needs the "
            f"input as the first positional argument; call it as {name.lower()}(x)")


def explanation_problem(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> str | None:
    """Why LRP with these rules cannot explain ``model``, or ``None``. ``modules``: ``model.modules()``, when the
    caller has them."""
    for module in model.modules() if modules is None else modules:
        reason = _problem(module)
        if reason is not None:
            name = next((name for name, m in model.named_modules() if m is module), "")
            return f"{type(module).__name__} {name or 'model'!r} {reason}"
    return None


_LAYER_OPERATIONS = ("linear", "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d", "addmm", "mm", "matmul", "bmm")


def _functional_layers(graph_module: nn.Module) -> bool:
    """Whether a GraphModule's graph computes a layer as an aten call (a call_function node of an aten overload such
    as ``aten.linear.default`` or ``aten.convolution.default``), as ``torch.export`` leaves every layer."""
    for node in graph_module.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) \
                and target.namespace == "aten" and target.__name__.split(".", 1)[0] in _LAYER_OPERATIONS:
            return True
    return False


def _problem(module: nn.Module) -> str | None:
    if any(isinstance(t, nn.parameter.UninitializedTensorMixin)
           for t in (*module._parameters.values(), *module._buffers.values())):
        return ("has parameters that are not initialised yet (a lazy module): run one forward of the model on a "
                "batch first, as before training")
    if isinstance(module, torch.jit.ScriptModule):
        return ("is a TorchScript module (torch.jit.script / trace): Python hooks do not run inside it, so no LRP "
                "rule can be applied to what it computes; attribute the eager module instead")
    if type(module).__name__ == "OptimizedModule" and isinstance(module._modules.get("_orig_mod"), nn.Module):
        return ("is a torch.compile'd submodule: its compiled code runs without the hooks that apply the rules; "
                "compile the whole model instead (attribution runs on the eager module under it) or attribute the "
                "eager submodule")
    if isinstance(module, torch.fx.GraphModule) and _functional_layers(module):
        return ("is a GraphModule whose layers are aten calls, not modules (torch.export's program): the rules apply "
                "to layer modules (nn.Linear, nn.Conv*), so none would apply here; attribute the eager model (a "
                "torch.fx.symbolic_trace GraphModule, which calls the layers as modules, is fine)")
    if _quantized(module):
        return ("is a quantized module (torch.ao.quantization convert): quantized kernels have no autograd, so no "
                "relevance reaches the input (it would be all zero); attribute the float model (before convert, or "
                "a float copy with the same weights)")
    if isinstance(module, nn.MultiheadAttention):
        return ("has no LRP rule (attention mixes three inputs through a softmax; zennit's Pass rule cannot be "
                "applied to it)")
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            not module.track_running_stats or module.running_mean is None or module.running_var is None):
        return ("has no running statistics (track_running_stats=False): in eval mode it normalises with the "
                "statistics of the batch, so one sample's relevance would depend on the others")
    return None


_QUANTIZED = ("torch.ao.nn.quantized.", "torch.ao.nn.intrinsic.quantized.", "torch.ao.nn.sparse.quantized.")
_FLOAT_IN_QUANTIZED = frozenset({"FloatFunctional", "FXFloatFunctional"})  # float stand-ins kept by prepare


def _quantized(module: nn.Module) -> bool:
    """A module of a converted quantized model (``torch.ao.nn.quantized``, its dynamic, fused intrinsic and sparse
    forms, or a subclass of one), whose kernels have no autograd; not the float modules of a model prepared for
    quantization (``FloatFunctional``, ``FXFloatFunctional``, the reference modules, which compute in floating
    point). Decided by the first torch class in the module's class hierarchy."""
    for cls in type(module).__mro__:
        path = cls.__module__
        if path.startswith("torch."):
            return path.startswith(_QUANTIZED) and not path.startswith("torch.ao.nn.quantized.reference.") \
                and cls.__name__ not in _FLOAT_IN_QUANTIZED
    return False


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """zennit's stabiliser: ``z + epsilon * sign(z)`` with ``sign(0) = +1``."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)


@contextlib.contextmanager
def inputs_only_carry_relevance(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """Parameters stop requiring gradients, so that ``requires_grad`` marks exactly what depends on the inputs
    (and autograd builds no weight-gradient graph). Restored on exit; run inside :func:`preserved_model_state`.
    ``modules``: ``model.modules()``, when the caller has them."""
    # a parameter shared by two modules may appear twice: harmless
    params = [p for module in (model.modules() if modules is None else modules)
              for p in module._parameters.values() if p is not None and p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def has_tensor(value) -> bool:
    """Whether an operation's result is (or holds) a tensor: a reader of its inputs, not a size or dtype query."""
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value)


def relevance_add(func, args: tuple, kwargs: dict | None) -> tuple[Tensor, Tensor, bool] | None:
    """``(a, b, in_place)`` when ``func(*args, **kwargs)`` is a sum of two tensors that both carry relevance
    (the operations that get Norm), else ``None``. A scaled sum (``alpha=``) is ordinary arithmetic."""
    name = operation_name(func)
    if name not in ADD_NAMES:
        return None
    if kwargs and ("input" in kwargs or "other" in kwargs):  # (a copy only then: every add of a forward comes here)
        kwargs = dict(kwargs)
        if not args and "input" in kwargs:  # torch.add(input=a, other=b)
            args = (kwargs.pop("input"),)
        if len(args) == 1 and "other" in kwargs:  # torch.add(a, other=b), a.add(other=b)
            args = (args[0], kwargs.pop("other"))
    if len(args) < 2:
        return None
    a, b = args[0], args[1]
    # (a leaf requiring grad is not the input, which the model gets as a copy: a parameter of the model's that is
    # not registered, held in a plain list, which attribution could not stop requiring grad)
    if not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.requires_grad and b.requires_grad
            and not a.is_leaf and not b.is_leaf):
        return None
    if len(args) > 2 or kwargs and (set(kwargs) - {"alpha"} or kwargs["alpha"] != 1):
        return None
    if not (a.is_floating_point() and b.is_floating_point()):
        return None
    return a, b, name in ("add_", "__iadd__")
