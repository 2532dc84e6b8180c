"""zennit composites by name, with the canonizers a model needs (the zennit reference backend)."""

from __future__ import annotations

import inspect
import sys

import torch
from torch import nn

__all__ = ["EPSILON_FLAT", "composite_names", "make_zennit_composite", "default_canonizers"]

EPSILON_FLAT = "epsilon_flat"


def composite_names() -> list[str]:
    """Names accepted as ``composite=``: the paper's ``"epsilon_flat"`` and zennit's registry."""
    from zennit.composites import COMPOSITES

    return [EPSILON_FLAT, *sorted(COMPOSITES)]


def _has_resnet_blocks(model: nn.Module) -> bool:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return any(isinstance(module, (BasicBlock, Bottleneck)) for module in model.modules())


def _exact_merge_batchnorm():
    """zennit's ``SequentialMergeBatchNorm``, with the merged BatchNorm an exact identity in every release.

    After merging, zennit 0.5.1 leaves the BatchNorm computing ``z / sqrt(1 + eps)`` (running_var = 1, eps kept):
    a systematic 1e-6..1e-2 deviation from merged LRP that grows with depth. zennit 1.0.0 sets ``eps = 0``
    instead, which some torch builds refuse ("batch_norm eps must be positive"). Here the BatchNorm keeps its
    positive eps and gets ``running_var = 1 - eps``, so that it divides by ``sqrt(1) = 1``. Both releases restore
    the original tensors and eps on removal (and :func:`preserved_model_state` checks that they did).
    """
    from zennit.canonizers import SequentialMergeBatchNorm

    class ExactSequentialMergeBatchNorm(SequentialMergeBatchNorm):
        linear_type = SequentialMergeBatchNorm.linear_type + _pyg_linear()

        def register(self, linears, batch_norm):
            eps = batch_norm.eps
            super().register(linears, batch_norm)
            unit_variance = torch.ones_like(batch_norm.running_var) - eps
            if batch_norm.eps == 0:  # zennit >= 1.0 sets attributes with object.__setattr__ and restores them so
                object.__setattr__(batch_norm, "eps", eps)
                object.__setattr__(batch_norm, "running_var", unit_variance)
            else:  # zennit 0.5 swaps .data and restores it
                batch_norm.running_var.data = unit_variance

    return ExactSequentialMergeBatchNorm()


def default_canonizers(model: nn.Module) -> list:
    """BatchNorm merging for every model; for torchvision ResNets also the explicit residual ``Sum`` module."""
    from zennit.canonizers import CompositeCanonizer
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    if _has_resnet_blocks(model):
        return [CompositeCanonizer((_exact_merge_batchnorm(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()))]
    return [_exact_merge_batchnorm()]


def _pyg_linear() -> tuple:
    """``torch_geometric.nn.Linear`` once torch_geometric is imported (zennit's types do not include it)."""
    if "torch_geometric" not in sys.modules:
        return ()
    from torch_geometric.nn import Linear

    return (Linear,)


def epsilon_flat(epsilon: float, canonizers: list):
    """The paper's composite: Flat on the first linear/conv layer, Epsilon on the others, Pass on activations,
    Norm on average pooling and residual sums, BatchNorm merged by the canonizers (Pass where it cannot be)."""
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import Epsilon, Flat
    from zennit.types import Linear

    linear = (Linear, *_pyg_linear())
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(linear, Epsilon(epsilon=epsilon))],
        first_map=[(linear, Flat())],
        canonizers=canonizers,
    )


def make_zennit_composite(composite, model: nn.Module, inputs: torch.Tensor, epsilon: float):
    """A zennit ``Composite`` for ``composite`` (a name or a ``Composite``, returned as given)."""
    from zennit.composites import COMPOSITES
    from zennit.core import Composite

    if isinstance(composite, Composite):
        return composite
    if not isinstance(composite, str):
        raise TypeError(
            f"composite should be a name ({', '.join(composite_names())}) or a zennit Composite, "
            f"but got {type(composite).__name__}."
        )
    canonizers = default_canonizers(model)
    if composite == EPSILON_FLAT:
        return epsilon_flat(epsilon, canonizers)
    if composite not in COMPOSITES:
        raise ValueError(f"composite should be one of {composite_names()}, but got {composite!r} instead.")
    cls = COMPOSITES[composite]
    accepted = inspect.signature(cls).parameters
    kwargs = {"canonizers": canonizers}
    if "epsilon" in accepted:
        kwargs["epsilon"] = epsilon
    if "low" in accepted and "high" in accepted:
        # Box bounds for the first layer: the value range of this batch.
        kwargs["low"] = inputs.detach().amin().expand_as(inputs)
        kwargs["high"] = inputs.detach().amax().expand_as(inputs)
    return cls(**kwargs)
