"""Benchmark cases and the step functions they time (one place for the pytest suite and the scripts).

Every case is a classifier, an SGD optimizer and one fixed batch ``(images, labels)`` on one device. The
variants, all run on the same model so that they are measured in one process and can be compared:

- ``plain``: the plain train step: ``model.train()``, forward, cross-entropy, backward, SGD step
  (``zero_grad(set_to_none=True)``).
- ``floor``: ``model.eval()``, forward with the input requiring grad, ``torch.autograd.grad`` of the logits with
  a one-hot ``grad_output`` (the labels) with respect to the input, ``model.train()`` back. What "one extra
  backward pass per batch" costs: a RelDrop step cannot be cheaper than ``plain + floor`` at the same precision.
- ``reldrop_fast`` / ``reldrop_zennit``: ``RelevanceDropout2d(model, p=1.0, backend=...)`` applied to the batch,
  then the plain train step on the masked batch. ``p = 1.0`` is the worst case: every sample is attributed.
- ``published``: a re-implementation (written here, nothing copied) of the structure of the published pixel
  variant (METHOD.md sections 3 and 5): zennit's ``Gradient`` attributor with the paper's composite (Flat first
  layer, Epsilon elsewhere, BatchNorm merged, Norm on pooling and residual sums) and zennit's own canonizers,
  built anew for every batch, for the whole batch; then a Python loop over the samples (a ``random`` coin,
  channel sum, min/max through ``.item()``, normalisation, noise, threshold, a per-channel boolean fill); then
  the plain train step. Its bugs are not reproduced: flat relevance gives no NaN, and the fill is ``0.0`` in the
  (normalised) space of the batch.
- ``mask_vectorised`` / ``mask_loop``: the mask stage alone on one fixed relevance tensor: channel sum,
  :func:`~reldrop_transforms.functional.relevance_dropout_mask` and
  :func:`~reldrop_transforms.functional.fill_dropped` (vectorised), against the per-sample loop of ``published``.

With ``precision="bf16"`` the train step and the floor run under ``torch.autocast(dtype=torch.bfloat16)``.
:class:`~reldrop_transforms.RelevanceDropout2d` has no ``dtype`` argument (and disables autocast inside, so it
would attribute in float32), so the RelDrop variants then use :func:`masked_batch_autocast`, which calls
:func:`~reldrop_transforms.attribution.relevance` with ``dtype=torch.bfloat16`` and applies the same mask rule;
the published baseline runs its zennit attribution under the same autocast. :attr:`Bench.attribution_precision`
says, per variant, in which precision the attribution ran.

Point-cloud cases (:class:`PointCase`: PointNet++ / PointNet, dense and PyG, issue #3 item 7) are defined here and
run by ``point_cases.PointBench`` (variants ``plain``, ``floor``, ``reldrop``, ``published`` and the two mask-stage
variants, float32 only); erasing cases (:class:`ErasingCase`: RelevanceErasing2d / 3d mask stage against the
published per-sample / per-cloud loops, issue #5 item 5) by ``erasing_cases.ErasingBench`` (the two mask-stage
variants only, float32); :func:`make_bench` builds the right bench for a case.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn

from reldrop_transforms import RelevanceDropout2d
from reldrop_transforms.attribution import relevance
from reldrop_transforms.functional import fill_dropped, relevance_dropout_mask

__all__ = [
    "Case", "CPU_CASES", "GPU_CASES", "CASES", "STEP_VARIANTS", "MASK_VARIANTS", "VARIANTS", "SLOW_VARIANTS",
    "ALPHA", "BETA", "P", "Bench", "build_model", "published_composite", "published_mask_loop",
    "vectorised_mask", "masked_batch_autocast", "synchronize",
    "PointCase", "CPU_POINT_CASES", "GPU_POINT_CASES", "POINT_STEP_VARIANTS", "POINT_VARIANTS", "ALL_VARIANTS",
    "make_bench", "ErasingCase", "CPU_ERASING_CASES", "GPU_ERASING_CASES",
]

# The paper's image settings; p = 1.0 (every sample attributed) is the worst case for the overhead.
ALPHA = 0.3
BETA = 0.5
P = 1.0
EPSILON = 1e-3
LEARNING_RATE = 1e-3

STEP_VARIANTS = ("plain", "floor", "reldrop_fast", "reldrop_zennit", "published")
MASK_VARIANTS = ("mask_vectorised", "mask_loop")
VARIANTS = STEP_VARIANTS + MASK_VARIANTS
# Several times slower than a train step: fewer repeats in the scripts, fewer rounds in the pytest suite.
SLOW_VARIANTS = ("reldrop_zennit", "published", "mask_loop")


@dataclass(frozen=True)
class Case:
    """One benchmark configuration.

    Args:
        name: Identifier used on the command line and as the pytest-benchmark group.
        arch: ``"small_cnn"``, ``"resnet18"`` or ``"resnet50"`` (torchvision, random weights).
        batch_size: Images per batch.
        image_size: Height and width of the (square, 3-channel) images.
        num_classes: Outputs of the classifier.
    """

    name: str
    arch: str
    batch_size: int
    image_size: int
    num_classes: int

    def describe(self) -> str:
        return f"{self.arch}, {self.image_size} px, batch {self.batch_size}"


CPU_CASES = (
    Case("small_cnn-32px-b64", "small_cnn", 64, 32, 10),
    Case("resnet18-32px-b32", "resnet18", 32, 32, 100),
)
GPU_CASES = (
    Case("resnet18-32px-b128", "resnet18", 128, 32, 100),
    Case("resnet18-32px-b512", "resnet18", 512, 32, 100),
    Case("resnet50-224px-b64", "resnet50", 64, 224, 1000),
)


@dataclass(frozen=True)
class PointCase:
    """One point-cloud benchmark configuration (issue #3 item 7); see ``benchmarks/point_cases.py``.

    Args:
        name: Identifier used on the command line and as the pytest-benchmark group.
        arch: ``"pointnet2"`` or ``"pointnet"`` (:mod:`reldrop_transforms.models`, random weights).
        layout: ``"dense"`` (a ``(B, N, C)`` tensor) or ``"pyg"`` (the same clouds as a PyG ``Batch``).
        batch_size: Clouds per batch.
        num_points: Points per cloud.
        in_channels: Channels per point: xyz, then normals (6).
        num_classes: Outputs of the classifier (40: ModelNet40).
    """

    name: str
    arch: str
    layout: str
    batch_size: int
    num_points: int
    in_channels: int = 6
    num_classes: int = 40

    def describe(self) -> str:
        return f"{self.arch} {self.layout}, {self.num_points} pts x {self.in_channels} ch, batch {self.batch_size}"


# PointNet++ at 1024 points x 32 clouds takes seconds per step on two shared CPU cores: the CPU cases are 256 x 16
# (and PointNet, which the fast engine supports, next to PointNet2, which falls back to zennit); the GPU cases are
# the size.
CPU_POINT_CASES = (
    PointCase("pointnet2-dense-n256-b16", "pointnet2", "dense", 16, 256),
    PointCase("pointnet2-pyg-n256-b16", "pointnet2", "pyg", 16, 256),
    PointCase("pointnet-dense-n256-b16", "pointnet", "dense", 16, 256),
    PointCase("pointnet-pyg-n256-b16", "pointnet", "pyg", 16, 256),
)
GPU_POINT_CASES = (
    PointCase("pointnet2-dense-n1024-b32", "pointnet2", "dense", 32, 1024),
    PointCase("pointnet2-pyg-n1024-b32", "pointnet2", "pyg", 32, 1024),
    PointCase("pointnet-dense-n1024-b32", "pointnet", "dense", 32, 1024),
    PointCase("pointnet-pyg-n1024-b32", "pointnet", "pyg", 32, 1024),
)


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


# The sizes (batch 512 x 32 px; 1024 points x 32 clouds) are cheap enough for the CPU too; batch 64 is the
# CPU-sized 2D row.
CPU_ERASING_CASES = (
    ErasingCase("erasing2d-32px-b512", "erasing2d", 512, 32),
    ErasingCase("erasing2d-32px-b64", "erasing2d", 64, 32),
    ErasingCase("erasing3d-dense-n1024-b32", "erasing3d", 32, 1024),
)
GPU_ERASING_CASES = (
    ErasingCase("erasing2d-32px-b512", "erasing2d", 512, 32),
    ErasingCase("erasing3d-dense-n1024-b32", "erasing3d", 32, 1024),
)
CASES = {case.name: case for case in CPU_CASES + GPU_CASES + CPU_POINT_CASES + GPU_POINT_CASES + CPU_ERASING_CASES}

# Point-cloud variants (point_cases.PointBench): "reldrop" is RelevanceDropout3d with its default backend ("auto").
POINT_STEP_VARIANTS = ("plain", "floor", "reldrop", "published")
POINT_VARIANTS = POINT_STEP_VARIANTS + MASK_VARIANTS
ALL_VARIANTS = ("plain", "floor", "reldrop", "reldrop_fast", "reldrop_zennit", "published") + MASK_VARIANTS


def make_bench(case: Case | PointCase | ErasingCase, device: str | torch.device = "cpu", precision: str = "fp32",
               seed: int = 0):
    """A :class:`Bench` for an image case, a ``point_cases.PointBench`` for a :class:`PointCase` (imported here:
    it needs torch_geometric), an ``erasing_cases.ErasingBench`` for an :class:`ErasingCase` (mask stage only)."""
    if isinstance(case, ErasingCase):
        from erasing_cases import ErasingBench

        return ErasingBench(case, device, precision, seed)
    if isinstance(case, PointCase):
        from point_cases import PointBench

        return PointBench(case, device, precision, seed)
    return Bench(case, device, precision, seed)


def build_model(case: Case, seed: int = 0) -> nn.Module:
    """The classifier of ``case``, seeded, in train mode (random weights, no downloads).

    ``small_cnn`` is Conv-BatchNorm-ReLU blocks with max pooling, global average pooling and a linear head: small
    enough for two CPU cores, and fully supported by the fast engine (as are torchvision's ResNets).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if case.arch == "small_cnn":

            def block(cin: int, cout: int) -> list[nn.Module]:
                return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

            model = nn.Sequential(
                *block(3, 16), *block(16, 16), nn.MaxPool2d(2),
                *block(16, 32), nn.MaxPool2d(2),
                *block(32, 64),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, case.num_classes),
            )
        elif case.arch == "resnet18":
            model = torchvision.models.resnet18(weights=None, num_classes=case.num_classes)
        elif case.arch == "resnet50":
            model = torchvision.models.resnet50(weights=None, num_classes=case.num_classes)
        else:
            raise ValueError(f"arch should be one of 'small_cnn', 'resnet18', 'resnet50', but got {case.arch!r}.")
    return model.train()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------------
# The published pixel variant, re-implemented (structure and costs, not the bugs)
# --------------------------------------------------------------------------------------------------------------
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


def published_attribution(model: nn.Module, images: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """zennit ``Gradient`` attribution of the whole batch, as the published transform did it: eval mode, a fresh
    composite per batch, one-hot targets from ``torch.eye``, train mode back afterwards."""
    from zennit.attribution import Gradient

    was_training = model.training
    model.eval()
    composite = published_composite(model)
    targets_one_hot = torch.eye(num_classes, device=images.device)[labels.long()]
    with Gradient(model=model, composite=composite) as attributor:
        inputs = images.clone().requires_grad_(True)
        _, attribution = attributor(inputs, targets_one_hot)
    if was_training:
        model.train()
    return attribution


def published_mask_loop(images: Tensor, attribution: Tensor, *, alpha: float = ALPHA, beta: float = BETA,
                        p: float = P, value: float = 0.0, rng: random.Random | None = None) -> Tensor:
    """The published per-sample mask loop: one Python iteration, several small kernels and two host-device
    synchronisations (``.item()``) per sample, and a boolean-index fill per channel.

    Args:
        images: The batch (not modified: the loop fills a clone).
        attribution: Relevance of the same shape as ``images``.
        alpha: Weight of the random term.
        beta: Drop threshold offset.
        p: Per-sample probability of masking, decided by a Python ``random`` coin.
        value: Fill value, in the space of ``images`` (``0.0`` is the mean after ``Normalize``).
        rng: Source of the coins (the ``random`` module's global state when ``None``).

    Shape:
        - images: (B, C, H, W).
        - attribution: (B, C, H, W).
        - output: (B, C, H, W).
    """
    coin = (rng or random).random
    outputs = images.clone()
    for i in range(images.shape[0]):
        if coin() >= p:
            continue
        image = outputs[i]
        rel = attribution[i].sum(0)
        low = rel.min().item()
        high = rel.max().item()
        if high - low > 1e-6:
            rel_norm = (rel - low) / (high - low)
        else:  # flat relevance: no ranking (the published guard; never NaN)
            rel_norm = torch.zeros_like(rel)
        noise = torch.rand_like(rel_norm)
        drop = alpha * noise + (1.0 - alpha) * rel_norm >= 1.0 - beta
        for channel in range(image.shape[0]):
            image[channel][drop] = value
    return outputs


def vectorised_mask(images: Tensor, attribution: Tensor, *, alpha: float = ALPHA, beta: float = BETA,
                    value: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """The mask stage of :class:`~reldrop_transforms.RelevanceDropout2d` at ``p = 1``: channel sum, mask rule,
    fill (vectorised over the batch, no synchronisation).

    Shape:
        - images: (B, C, H, W).
        - attribution: (B, C, H, W).
        - output: (B, C, H, W).
    """
    mask = relevance_dropout_mask(attribution.sum(1), alpha, beta, generator=generator)
    return fill_dropped(images, mask, value)


def masked_batch_autocast(model: nn.Module, images: Tensor, labels: Tensor, *, backend: str, dtype: torch.dtype,
                          generator: torch.Generator | None = None) -> Tensor:
    """What ``RelevanceDropout2d(model, p=1.0, backend=backend)`` does, with the attribution under autocast in
    ``dtype`` (the transform has no ``dtype`` argument): relevance, channel sum, mask rule, fill.

    Shape:
        - images: (B, C, H, W), float32.
        - labels: (B,), integer.
        - output: (B, C, H, W), float32.
    """
    rel = relevance(model, images, labels, composite="epsilon_flat", epsilon=EPSILON, backend=backend, dtype=dtype)
    return vectorised_mask(images, rel, generator=generator)


# --------------------------------------------------------------------------------------------------------------
# A case on a device: model, optimizer, batch, and every variant as a callable
# --------------------------------------------------------------------------------------------------------------
class Bench:
    """A case instantiated on a device: a model, its SGD optimizer, one fixed batch and the variants.

    Args:
        case: The configuration.
        device: Where the model and the batch live.
        precision: ``"fp32"``, or ``"bf16"`` (train step and floor under bfloat16 autocast, and the attribution
            too: see the module docstring).
        seed: Seeds the weights, the batch, the mask noise and the published loop's coins.
    """

    variant_names = VARIANTS
    slow_variants = SLOW_VARIANTS

    def __init__(self, case: Case, device: str | torch.device = "cpu", precision: str = "fp32", seed: int = 0) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision should be 'fp32' or 'bf16', but got {precision!r} instead.")
        self.case = case
        self.device = torch.device(device)
        self.precision = precision
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.model = build_model(case, seed).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(seed)
        shape = (case.batch_size, 3, case.image_size, case.image_size)
        self.images = torch.randn(shape, generator=generator).to(self.device)  # as after Normalize
        self.labels = torch.randint(0, case.num_classes, (case.batch_size,), generator=generator).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.rng = random.Random(seed)
        self.transforms = {
            backend: RelevanceDropout2d(self.model, alpha=ALPHA, beta=BETA, p=P, value=0.0, composite="epsilon_flat",
                                        epsilon=EPSILON, backend=backend, generator=self.generator)
            for backend in ("fast", "zennit")
        }
        self._mask_relevance: Tensor | None = None

    # -- precision --------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    @property
    def attribution_precision(self) -> dict[str, str]:
        """Precision in which each variant's attribution runs (``"-"`` for variants without one)."""
        attribution = "bf16 autocast" if self.autocast_dtype is not None else "fp32"
        return {
            "plain": "-", "floor": attribution, "reldrop_fast": attribution, "reldrop_zennit": attribution,
            "published": attribution, "mask_vectorised": "-", "mask_loop": "-",
        }

    # -- the variants -----------------------------------------------------------------------------------------
    def plain_step(self, images: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """One plain train step on ``images`` (the fixed batch by default); returns the detached loss."""
        images = self.images if images is None else images
        labels = self.labels if labels is None else labels
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = nn.functional.cross_entropy(self.model(images), labels)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def floor(self) -> Tensor:
        """Eval forward and input gradient of the label logits (one-hot ``grad_output``); returns the gradient."""
        self.model.eval()
        try:
            inputs = self.images.detach().requires_grad_(True)
            with self._autocast():
                logits = self.model(inputs)
            grad_output = nn.functional.one_hot(self.labels, logits.shape[1]).to(logits.dtype)
            (gradient,) = torch.autograd.grad(logits, inputs, grad_output)
        finally:
            self.model.train()
        return gradient

    def masked_batch(self, backend: str) -> Tensor:
        """The fixed batch after RelDrop (``p = 1``) with the given attribution backend."""
        if self.autocast_dtype is None:
            images, _ = self.transforms[backend](self.images, self.labels)
            return images
        return masked_batch_autocast(self.model, self.images, self.labels, backend=backend,
                                     dtype=self.autocast_dtype, generator=self.generator)

    def reldrop_step(self, backend: str) -> Tensor:
        """RelDrop on the fixed batch, then the plain train step on the masked batch; returns the masked batch."""
        masked = self.masked_batch(backend)
        self.plain_step(masked, self.labels)
        return masked

    def published_step(self) -> Tensor:
        """The published pixel variant (re-implemented), then the plain train step; returns the masked batch."""
        with self._autocast():
            attribution = published_attribution(self.model, self.images, self.labels, self.case.num_classes)
        masked = published_mask_loop(self.images, attribution.float(), rng=self.rng)
        self.plain_step(masked, self.labels)
        return masked

    @property
    def mask_relevance(self) -> Tensor:
        """A fixed relevance tensor for the mask-stage variants (fast engine, computed once)."""
        if self._mask_relevance is None:
            self._mask_relevance = relevance(self.model, self.images, self.labels, backend="fast")
        return self._mask_relevance

    def mask_vectorised(self) -> Tensor:
        """Mask stage alone, vectorised; returns the masked batch."""
        return vectorised_mask(self.images, self.mask_relevance, generator=self.generator)

    def mask_loop(self) -> Tensor:
        """Mask stage alone, the published per-sample loop; returns the masked batch."""
        return published_mask_loop(self.images, self.mask_relevance, rng=self.rng)

    def variants(self) -> dict[str, Callable[[], Tensor]]:
        """Every variant as a callable without arguments, in :data:`VARIANTS` order."""
        return {
            "plain": self.plain_step,
            "floor": self.floor,
            "reldrop_fast": lambda: self.reldrop_step("fast"),
            "reldrop_zennit": lambda: self.reldrop_step("zennit"),
            "published": self.published_step,
            "mask_vectorised": self.mask_vectorised,
            "mask_loop": self.mask_loop,
        }
