"""zennit composites by name, with the canonizers a model needs (the zennit reference backend)."""

from __future__ import annotations

import inspect

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


def default_canonizers(model: nn.Module) -> list:
    """BatchNorm merging for every model; for torchvision ResNets also the explicit residual ``Sum`` module."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    return [ResNetCanonizer()] if _has_resnet_blocks(model) else [SequentialMergeBatchNorm()]


def epsilon_flat(epsilon: float, canonizers: list):
    """The paper's composite: Flat on the first linear/conv layer, Epsilon on the others, Pass on activations,
    Norm on average pooling and residual sums, BatchNorm merged by the canonizers (Pass where it cannot be)."""
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import Epsilon, Flat
    from zennit.types import Linear

    return SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(Linear, Epsilon(epsilon=epsilon))],
        first_map=[(Linear, Flat())],
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
