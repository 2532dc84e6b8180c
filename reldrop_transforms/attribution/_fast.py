"""The fast exact LRP engine: the paper's composite as one eval forward and one backward.

Gradient form (METHOD.md section 3). Write the relevance at every tensor ``t`` as ``R_t = t * g_t``. Then

- Epsilon at a (BatchNorm-merged) linear/conv unit with output ``z`` is an ordinary backward through the unit
  after the elementwise rescale ``g_z <- g_z * z / stab(z, eps)`` (at the BatchNorm output when one follows: that
  is what merging means, and no weight is touched);
- Norm (average pooling, residual sums) is the same rescale with zennit's stabiliser 1e-6;
- Pass on a positively homogeneous activation (ReLU, LeakyReLU) is its ordinary gradient; on other
  activations with ``f(0) = 0`` (GELU, SiLU, Tanh, ...) it is ``g_in = g_out * out / in``;
- routing operations (Flatten, MaxPool, Dropout in eval, Identity, views) are their ordinary gradient;
- Flat at the first linear unit turns ``R_z = z * g_z`` into input relevance with one transposed
  convolution of ones; at the model's output unit the seed is the output relevance itself, so the rescale there
  is ``1 / stab(z)``.

Each rule point is a tiny autograd Function inserted by a forward hook; the rescale is computed in the backward
from the saved output (no extra activation memory). torchvision ResNet blocks get an out-of-place forward with
an explicit Norm point at the residual sum (as zennit's ResNet canonizer). A model is accepted when every leaf
module is of a supported type and every operation run outside them is a routing operation (audited once per
model structure with a TorchFunctionMode); otherwise the caller falls back to zennit.
"""

from __future__ import annotations

import sys
import types
import weakref
from typing import Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["FastLRP", "UnsupportedModel", "fast_relevance", "FAST_COMPOSITES"]

FAST_COMPOSITES = ("epsilon_flat",)
NORM_STABILIZER = 1e-6  # zennit's default for Norm and Flat

_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU)  # Pass == gradient
# Pass on activations with f(0) = 0 only: relevance at an exactly-zero input (plentiful after a ReLU) cannot be
# written as input * gradient, so Sigmoid, Softplus and a BatchNorm that follows no linear layer are not supported.
_PASS = (nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Hardswish, nn.Mish, nn.ReLU6, nn.Hardtanh)
_ROUTING = (
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# transposed convolution with the right output size (it works out output_padding for strided layers)
_CONV_INPUT_GRAD = {nn.Conv1d: nn.grad.conv1d_input, nn.Conv2d: nn.grad.conv2d_input, nn.Conv3d: nn.grad.conv3d_input}
_CONV_FORWARD = {nn.Conv1d: nn.functional.conv1d, nn.Conv2d: nn.functional.conv2d, nn.Conv3d: nn.functional.conv3d}


class _Types:
    """The layer types, with PyTorch Geometric's Linear and aggregations once torch_geometric is imported (a
    model that uses them has imported it; the core never imports it, which takes seconds)."""

    def __init__(self) -> None:
        self.linear, self.norm, self.routing = _LINEAR, _AVGPOOL, _ROUTING
        if "torch_geometric" in sys.modules:
            from torch_geometric.nn import Linear as PygLinear
            from torch_geometric.nn.aggr import MaxAggregation, MeanAggregation, SumAggregation

            self.linear = self.linear + (PygLinear,)
            self.norm = self.norm + (MeanAggregation, SumAggregation)  # Norm, as average pooling
            self.routing = self.routing + (MaxAggregation,)
        self.supported = frozenset(self.linear + _BATCHNORM + self.norm + _HOMOGENEOUS + _PASS + self.routing)

# Operations whose Jacobian only routes (copies or selects) elements, or ReLU: on these, propagating
# relevance with the plain gradient (zennit, for operations it cannot see) and the gradient form agree.
_ROUTING_OPS = frozenset({
    "flatten", "unflatten", "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "contiguous",
    "squeeze", "unsqueeze", "__getitem__", "narrow", "select", "cat", "concat", "concatenate", "stack", "split",
    "chunk", "unbind", "expand", "expand_as", "relu", "relu_", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices", "_max_pool1d", "_max_pool2d",
    "_max_pool3d", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "size", "dim", "numel", "__get__", "__len__", "clone", "detach", "is_floating_point", "__format__",
    "max", "amax", "gather", "index_select", "take_along_dim",
})


class UnsupportedModel(Exception):
    """The fast engine cannot reproduce the composite on this model (the message says why)."""


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """zennit's stabiliser: ``z + epsilon * sign(z)`` with ``sign(0) = +1``."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)


class _Unit:
    """A rule point: a tensor in the forward where the backward applies one LRP rule."""

    __slots__ = ("kind", "module", "inp", "epsilon", "active", "is_output", "output")

    def __init__(self, kind: str, module: nn.Module | None, inp: Tensor | None, epsilon: float) -> None:
        self.kind = kind  # "epsilon" | "norm" | "flat" | "pass"
        self.module = module  # the linear module of an "epsilon"/"flat" unit
        self.inp = inp  # that module's input (the Flat rule redistributes onto it)
        self.epsilon = epsilon
        self.active = True
        self.is_output = False
        self.output: Tensor | None = None


class _RulePoint(torch.autograd.Function):
    """Identity in the forward, applied in place (``mark_dirty``): the point's output is the layer's own output
    tensor, so a following ``ReLU(inplace=True)`` still runs in place. The backward reads the output's values as
    they are then: where a later in-place ReLU changed them (negative pre-activations), that ReLU's gradient is
    zero, so the rule's result is the same."""

    @staticmethod
    def forward(ctx, out: Tensor, inp: Tensor, unit: _Unit) -> Tensor:
        ctx.unit = unit
        ctx.set_materialize_grads(False)  # a branch cut off by Flat sends None: keep it None, compute nothing
        ctx.out = out.detach()  # not save_for_backward: its version may change (in-place ReLU), see above
        ctx.save_for_backward(inp)
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        unit: _Unit = ctx.unit
        if grad is None:
            return None, None, None
        out = ctx.out
        (inp,) = ctx.saved_tensors
        if not unit.active:
            return grad, None, None
        if unit.kind == "pass":
            ratio = out / torch.where(inp == 0, torch.ones_like(inp), inp)
            return None, torch.where(inp == 0, torch.zeros_like(grad), grad * ratio), None
        if unit.kind == "flat":
            rel = grad if unit.is_output else grad * out
            return None, _flat_input_relevance(unit.module, inp, rel), None
        if unit.is_output:
            return grad / stabilize(out, unit.epsilon), None, None
        # z / (z + eps * sign(z)) == |z| / (|z| + eps) (also at z = 0): two buffers, four passes
        magnitude = out.abs()
        return magnitude.div_(magnitude + unit.epsilon).mul_(grad), None, None


def _flat_input_relevance(module: nn.Module, inp: Tensor, rel: Tensor) -> Tensor:
    """Flat rule: spread ``rel`` uniformly over each output's receptive field (zennit's ``Flat``).

    With all-one weights every input channel receives the same spread, so (without groups) the work is done on
    one input and one output channel: the counts are ``in_channels`` times a one-channel convolution of ones
    (one sample: they depend on the shape only), and the relevance summed over output channels is spread by that
    one-channel convolution's transpose. A linear layer's counts are its ``in_features``.
    """
    if isinstance(module, _CONV) and module.groups == 1 and not isinstance(module.padding, str):
        # The counts depend on the shape only: one sample, one channel.
        ones = inp.new_ones((1, 1, *inp.shape[2:]))
        window = inp.new_ones((1, 1, *module.weight.shape[2:]))
        counts = module._conv_forward(ones, window, None) * module.weight.shape[1]
        share = rel.sum(1, keepdim=True) / stabilize(counts, NORM_STABILIZER)
        kernel, dilation = module.weight.shape[2:], module.dilation
        full = [d * (k - 1) - p for k, d, p in zip(kernel, dilation, module.padding)]
        if all(stride == 1 for stride in module.stride) and all(f >= 0 for f in full):
            # stride 1: the transpose of a correlation with a symmetric (all-one) kernel is a correlation
            # with "full" padding, which CPU backends run far faster than a one-channel transposed convolution
            spread = _CONV_FORWARD[type(module)](share, window, None, 1, tuple(full), dilation)
        else:
            transpose = _CONV_INPUT_GRAD[type(module)]
            spread = transpose((inp.shape[0], 1, *inp.shape[2:]), window, share, module.stride, module.padding,
                               dilation)
        return spread.expand_as(inp)
    if not isinstance(module, _CONV):  # nn.Linear, torch_geometric.nn.Linear: every output sees every input
        counts = torch.full((), module.weight.shape[1], dtype=rel.dtype, device=rel.device)
        return (rel.sum(-1, keepdim=True) / stabilize(counts, NORM_STABILIZER)).expand_as(inp)
    with torch.enable_grad():  # grouped convolutions, string padding: the convolution of ones, differentiated
        ones = torch.ones_like(inp).requires_grad_(True)
        counts = module._conv_forward(ones, torch.ones_like(module.weight), None)
        (spread,) = torch.autograd.grad(counts, ones, rel / stabilize(counts.detach(), NORM_STABILIZER))
    return spread


def _first_linear(model: nn.Module, linear_types: tuple) -> nn.Module | None:
    # As zennit's SpecialFirstLayerMapComposite: the first linear-type module in module order.
    from zennit.types import Linear

    for module in model.modules():
        if isinstance(module, (Linear, *linear_types)):
            return module
    return None


class _Audit(TorchFunctionMode):
    """Records operations run outside the modules the engine handles, and which tensors are *raw*: derived from
    the inputs without passing the first (Flat) layer.

    Below the Flat layer the backward carries relevance itself, which both zennit and autograd propagate with the
    plain gradient: any operation is exact there (e.g. PointNet++'s relative coordinates). Above it, only routing
    operations are. A raw tensor reaching any other layer would mix the two (an input skipping the first layer).
    """

    def __init__(self, engine: "FastLRP") -> None:
        super().__init__()
        self.engine = engine
        self.unknown: list[str] = []
        self.raw: dict[int, Tensor] = {}  # id -> tensor (kept alive so that ids stay unique)

    def mark_raw(self, value) -> None:
        for tensor in _tensors(value):
            self.raw[id(tensor)] = tensor

    def is_raw(self, value) -> bool:
        return any(id(tensor) in self.raw for tensor in _tensors(value))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if self.engine.depth == 0 and _requires_grad(result):
            if self.is_raw((args, kwargs)):
                self.mark_raw(result)
            elif getattr(func, "__name__", repr(func)) not in _ROUTING_OPS:
                # Only operations on the relevance path matter (index and shape arithmetic does not).
                self.unknown.append(getattr(func, "__name__", repr(func)))
        return result


def _tensors(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _requires_grad(value) -> bool:
    if isinstance(value, Tensor):
        return value.requires_grad
    if isinstance(value, (tuple, list)):
        return any(_requires_grad(v) for v in value)
    return False


def _basic_block_forward(engine: "FastLRP") -> Callable:
    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(engine.residual_sum(out, identity))

    return forward


def _bottleneck_forward(engine: "FastLRP") -> Callable:
    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(engine.residual_sum(out, identity))

    return forward


def module_structure(model: nn.Module) -> tuple:
    """The module tree as identities and types: what a cached verdict or captured graph depends on."""
    return tuple((id(m), type(m)) for m in model.modules())


# model -> (structure, None if supported else the reason)
_VERDICTS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


class FastLRP:
    """One attribution pass of the fast engine over ``model`` (hooks live only inside :meth:`__call__`)."""

    def __init__(self, model: nn.Module, epsilon: float) -> None:
        self.model = model
        self.epsilon = epsilon
        self.depth = 0
        self.first_seen = False
        self.audit: _Audit | None = None
        self.units: dict[int, _Unit] = {}
        self.types = _Types()
        self.first = _first_linear(model, self.types.linear)

    # -- static support check -----------------------------------------------------------------------------
    def static_problem(self) -> str | None:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        if self.first is None or not isinstance(self.first, self.types.linear):
            return "its first linear layer is missing or not a Conv1d/2d/3d or Linear"
        for name, module in self.model.named_modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                if type(module) not in (BasicBlock, Bottleneck):
                    return f"module {name!r} subclasses a torchvision ResNet block ({type(module).__name__})"
                continue
            if next(module.children(), None) is None and type(module) not in self.types.supported:
                return f"module {name or 'model'!r} of type {type(module).__name__} is not supported"
            if isinstance(module, _CONV) and module.padding_mode != "zeros":
                return f"convolution {name!r} uses padding_mode={module.padding_mode!r}"
        return None

    # -- rule points --------------------------------------------------------------------------------------
    def _point(self, out: Tensor, inp: Tensor, unit: _Unit) -> Tensor:
        result = _RulePoint.apply(out, inp, unit)
        unit.output = result
        self.units[id(result)] = unit
        return result

    def residual_sum(self, a: Tensor, b: Tensor) -> Tensor:
        self.depth += 1
        try:
            total = a + b
            return self._point(total, a, _Unit("norm", None, None, NORM_STABILIZER))
        finally:
            self.depth -= 1

    def _pre_hook(self, module, args):
        self.depth += 1
        if self.audit is not None and module is not self.first and not isinstance(module, self.types.routing) \
                and self.audit.is_raw(args):
            raise UnsupportedModel(f"the input reaches a {type(module).__name__} without passing the first layer")
        if not self.first_seen:
            if module is self.first:
                self.first_seen = True
            elif not isinstance(module, self.types.routing):
                # Below the Flat layer the backward carries relevance, not gradients: only routing is exact there.
                raise UnsupportedModel(f"a {type(module).__name__} runs before the first linear layer")

    def _hook(self, module: nn.Module, args, out: Tensor):
        self.depth -= 1
        if self.audit is not None and module is not self.first and self.audit.is_raw(args):
            self.audit.mark_raw(out)  # a routing module below the first layer
        if not args or not isinstance(args[0], Tensor):
            raise UnsupportedModel(f"a {type(module).__name__} is called without a positional input tensor")
        inp = args[0]
        if isinstance(module, self.types.linear):
            if module is self.first:  # Flat sends relevance straight to the input: cut the layer's own graph
                return self._point(out.detach(), inp, _Unit("flat", module, inp, self.epsilon))
            return self._point(out, inp, _Unit("epsilon", module, inp, self.epsilon))
        if isinstance(module, _BATCHNORM):
            producer = self.units.get(id(inp))
            if producer is not None and producer.output is inp and producer.module is not None and producer.active:
                # Merge: the linear unit's rule moves to the BatchNorm output (no weight is modified).
                producer.active = False
                unit = _Unit(producer.kind, producer.module, producer.inp, self.epsilon)
                return self._point(out.detach() if unit.kind == "flat" else out, producer.inp, unit)
            raise UnsupportedModel(f"a {type(module).__name__} follows no Conv/Linear layer (it cannot be merged)")
        if isinstance(module, self.types.norm):
            return self._point(out, inp, _Unit("norm", None, None, NORM_STABILIZER))
        if isinstance(module, _PASS):
            return self._point(out.detach(), inp, _Unit("pass", None, None, 0.0))
        return None  # homogeneous activations and routing modules: ordinary gradient

    # -- one pass -----------------------------------------------------------------------------------------
    def __call__(
        self,
        leaves: tuple[Tensor, ...],
        call: Callable[[], Tensor],
        grad_output_fn: Callable[[Tensor], Tensor],
        *,
        audit: bool,
    ) -> tuple[Tensor, ...]:
        """Relevance of each of ``leaves`` (tensors requiring grad that ``call()`` feeds to the model).

        ``grad_output_fn(logits)`` gives the output relevance. The model must already be in eval mode inside a
        :func:`preserved_model_state` block.
        """
        from torchvision.models.resnet import BasicBlock, Bottleneck

        handles = []
        try:
            for module in self.model.modules():
                if isinstance(module, BasicBlock):
                    module.forward = types.MethodType(_basic_block_forward(self), module)
                elif isinstance(module, Bottleneck):
                    module.forward = types.MethodType(_bottleneck_forward(self), module)
                if next(module.children(), None) is not None:
                    continue
                if getattr(module, "inplace", False) and type(module) is not nn.ReLU:
                    module.inplace = False  # only an in-place ReLU leaves the rules' results unchanged
                handles.append(module.register_forward_pre_hook(self._pre_hook))
                handles.append(module.register_forward_hook(self._hook))
            if audit:
                mode = self.audit = _Audit(self)
                mode.mark_raw(leaves)
                with mode:
                    logits = call()
                if mode.unknown:
                    names = sorted(set(mode.unknown))
                    raise UnsupportedModel(
                        f"its forward runs operations outside supported modules that LRP must see as layers: "
                        f"{', '.join(names[:8])}"
                    )
            else:
                logits = call()
            grad_output = grad_output_fn(logits)
            output_unit = self.units.get(id(logits))
            if output_unit is None or output_unit.output is not logits or output_unit.kind not in ("epsilon", "flat"):
                raise UnsupportedModel("its output is not produced by a Linear/Conv layer (optionally with BatchNorm)")
            output_unit.is_output = True
            rels = torch.autograd.grad(logits, leaves, grad_output, allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
            for unit in self.units.values():  # unit -> output -> its autograd node -> unit: break the cycle
                unit.output = unit.inp = None
            self.units.clear()
            self.audit = None
        return tuple(torch.zeros_like(x) if r is None else r for x, r in zip(leaves, rels))


def known_refusal(model: nn.Module) -> str | None:
    """Why the fast engine refused this model's current structure, if it already did (no work otherwise)."""
    cached = _VERDICTS.get(model)
    return cached[1] if cached is not None and cached[0] == module_structure(model) else None


def fast_relevance(
    model: nn.Module,
    leaves: tuple[Tensor, ...],
    call: Callable[[], Tensor],
    grad_output_fn: Callable[[Tensor], Tensor],
    epsilon: float,
) -> tuple[Tensor, ...]:
    """Run the fast engine; raises :class:`UnsupportedModel` when the model is not supported.

    The first call for a model structure audits the operations of its forward; later calls skip the audit.
    """
    structure = module_structure(model)
    cached = _VERDICTS.get(model)
    if cached is not None and cached[0] == structure:
        if cached[1] is not None:
            raise UnsupportedModel(cached[1])
        return FastLRP(model, epsilon)(leaves, call, grad_output_fn, audit=False)
    engine = FastLRP(model, epsilon)
    problem = engine.static_problem()
    if problem is None:
        try:
            rel = engine(leaves, call, grad_output_fn, audit=True)
        except UnsupportedModel as error:
            problem = str(error)
    _VERDICTS[model] = (structure, problem)
    if problem is not None:
        raise UnsupportedModel(problem)
    return rel
