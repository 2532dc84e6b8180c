"""What every benchmark case module shares: settings, variant names, the case dataclasses, helpers.

The bottom of the benchmarks' imports: this module imports none of the case modules. ``cases.py`` (image cases,
and the registries ``CASES``, ``CPU_CASES``, ... and ``make_bench``), ``point_cases.py`` and ``erasing_cases.py``
import from it; ``cases.py`` imports the other two (``point_cases`` on first use: it needs torch_geometric).

- Settings: :data:`ALPHA`, :data:`BETA`, :data:`P` (RelDrop on images), :data:`EPSILON` (the Epsilon rule),
  :data:`LEARNING_RATE` (the SGD step).
- Variant names: :data:`STEP_VARIANTS`, :data:`MASK_VARIANTS`, :data:`VARIANTS`, :data:`SLOW_VARIANTS` (image
  cases), :data:`POINT_STEP_VARIANTS`, :data:`POINT_VARIANTS` (point cases), :data:`ALL_VARIANTS` (every name).
- Case configurations: :class:`Case` (images), :class:`PointCase` (point clouds), :class:`ErasingCase` (erasing
  mask stage).
- :func:`synchronize`, and :func:`published_composite` (the paper's zennit composite, used by the published
  baselines of the image and the point cases).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ALPHA", "BETA", "P", "EPSILON", "LEARNING_RATE",
    "STEP_VARIANTS", "MASK_VARIANTS", "VARIANTS", "SLOW_VARIANTS", "POINT_STEP_VARIANTS", "POINT_VARIANTS",
    "ALL_VARIANTS", "MASKED_POOL", "MaskedPool",
    "Case", "PointCase", "ErasingCase", "synchronize", "published_composite",
]

# The paper's image settings; p = 1.0 (every sample attributed) is the worst case for the overhead.
ALPHA = 0.3
BETA = 0.5
P = 1.0
EPSILON = 1e-3
LEARNING_RATE = 1e-3

# "floor_then_step": the floor, then the plain step on a batch RelDrop masked: the RelDrop step an engine whose
# attribution costs exactly one floor, with a free mask stage, would take, measured as one sequence (the step after
# an attribution pays for what the attribution did to the caches and the allocator, which timing them apart hides).
# The masked batches come from a pool of MASKED_POOL batches RelDrop masked in advance, one after the other: a point
# model's step costs what the mask makes it (PointNet++ 38.6-64.5 ms over 8 masks, 36.4 ms on the clean clouds).
MASKED_POOL = 8


class MaskedPool:
    """:data:`MASKED_POOL` batches made by ``make()`` on first use, handed out in turn by :meth:`next`."""

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make
        self.batches: list | None = None
        self.turn = -1

    def next(self):
        if self.batches is None:
            self.batches = [self.make() for _ in range(MASKED_POOL)]
        self.turn = (self.turn + 1) % len(self.batches)
        return self.batches[self.turn]


# "attribution": the attribution alone (an ``Attributor`` call on the fixed batch, the RelDrop variant's engine, no
# mask and no step): against "floor" it says how much of a RelDrop step's extra is the attribution itself, and how
# much the mask stage and the sequence (the step after an attribution) add.
STEP_VARIANTS = ("plain", "floor", "attribution", "floor_then_step", "reldrop_fast", "reldrop_zennit", "published")
MASK_VARIANTS = ("mask_vectorised", "mask_loop")
VARIANTS = STEP_VARIANTS + MASK_VARIANTS
# Several times slower than a train step: fewer repeats in the scripts, fewer rounds in the pytest suite.
SLOW_VARIANTS = ("reldrop_zennit", "published", "mask_loop")

# Point-cloud variants (point_cases.PointBench): "reldrop" is RelevanceDropout3d with its default backend ("auto").
# "plain_masked": the plain step on batches RelDrop masked (the pool above: a point model's own cost depends on its
# input: PointNet++'s ball query on zero-filled points costs more than on the clouds). "reldrop_half": the same at
# p = 0.5 (about half the clouds masked; only theirs attributed).
POINT_STEP_VARIANTS = ("plain", "plain_masked", "floor", "attribution", "floor_then_step", "reldrop", "reldrop_half",
                       "published")
POINT_VARIANTS = POINT_STEP_VARIANTS + MASK_VARIANTS
ALL_VARIANTS = ("plain", "plain_masked", "floor", "attribution", "floor_then_step", "reldrop", "reldrop_half",
                "reldrop_fast", "reldrop_zennit", "published") + MASK_VARIANTS


@dataclass(frozen=True)
class Case:
    """One benchmark configuration.

    Args:
        name: Identifier used on the command line and as the pytest-benchmark group.
        arch: ``"small_cnn"``, ``"resnet18"``, ``"resnet50"``, ``"mobilenet_v2"`` or ``"efficientnet_b0"``
            (torchvision, random weights; see ``cases.build_model``).
        batch_size: Images per batch.
        image_size: Height and width of the (square, 3-channel) images.
        num_classes: Outputs of the classifier.
        learning_rate: The SGD step's learning rate; ``None`` (default): :data:`LEARNING_RATE`. ``0.0`` runs the
            same arithmetic (gradients, weight decay, momentum, update) but leaves the weights as they are: for a
            model whose relevance leaves float32's range once trained on the fixed batch (EfficientNet-B0, see
            ``cases.py``).
    """

    name: str
    arch: str
    batch_size: int
    image_size: int
    num_classes: int
    learning_rate: float | None = None

    def describe(self) -> str:
        frozen = "" if self.learning_rate is None else f", lr {self.learning_rate:g}"
        return f"{self.arch}, {self.image_size} px, batch {self.batch_size}{frozen}"


@dataclass(frozen=True)
class PointCase:
    """One point-cloud benchmark configuration (issue #3 item 7); see ``benchmarks/point_cases.py``.

    Args:
        name: Identifier used on the command line and as the pytest-benchmark group.
        arch: ``"pointnet2"``, ``"pointnet"`` or ``"dgcnn"`` (:mod:`reldrop_transforms.models`, random weights).
        layout: ``"dense"`` (a ``(B, N, C)`` tensor) or ``"pyg"`` (the same clouds as a PyG ``Batch``).
        batch_size: Clouds per batch.
        num_points: Points per cloud.
        in_channels: Channels per point: xyz, then normals (6).
        num_classes: Outputs of the classifier (40: ModelNet40).
        k: Neighbours per point of DGCNN's kNN graphs (the point itself included); ``None`` for the other
            architectures (and for DGCNN's default, 20).
    """

    name: str
    arch: str
    layout: str
    batch_size: int
    num_points: int
    in_channels: int = 6
    num_classes: int = 40
    k: int | None = None

    def describe(self) -> str:
        neighbours = "" if self.k is None else f", k {self.k}"
        return (f"{self.arch} {self.layout}, {self.num_points} pts x {self.in_channels} ch, "
                f"batch {self.batch_size}{neighbours}")


@dataclass(frozen=True)
class ErasingCase:
    """A mask-stage-only erasing configuration (issue #5 item 5); see ``benchmarks/erasing_cases.py``.

    Args:
        name: Identifier used on the command line and as the pytest-benchmark group.
        kind: ``"erasing2d"`` (images, Block erasing) or ``"erasing3d"`` (dense point clouds, ball erasing).
        batch_size: Images or clouds per batch.
        size: Height and width of the (square, 3-channel) images, or points per cloud (6 channels).
    """

    name: str
    kind: str
    batch_size: int
    size: int

    def describe(self) -> str:
        if self.kind == "erasing2d":
            return f"erasing2d, {self.size} px, batch {self.batch_size}"
        return f"erasing3d dense, {self.size} pts x 6 ch, batch {self.batch_size}"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def published_composite(model: nn.Module, epsilon: float = EPSILON):
    """The paper's composite as the authors built it with zennit: Flat on the first linear layer, Epsilon on the
    others, zennit's default map elsewhere (Pass on activations, Norm on average pooling and the residual ``Sum``),
    with zennit's stock canonizers (``ResNetCanonizer`` for ResNets, else ``SequentialMergeBatchNorm``)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import Epsilon, Flat
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Linear

    is_resnet = any(isinstance(module, (BasicBlock, Bottleneck)) for module in model.modules())
    canonizers = [ResNetCanonizer()] if is_resnet else [SequentialMergeBatchNorm()]
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(Linear, Epsilon(epsilon=epsilon))],
        first_map=[(Linear, Flat())],
        canonizers=canonizers,
    )
