"""Benchmark cases and the step functions they time (one place for the pytest suite and the scripts).

Every case is a classifier, an SGD optimizer and one fixed batch ``(images, labels)`` on one device. The
variants, all run on the same model so that they are measured in one process and can be compared:

- ``plain``: the plain train step: ``model.train()``, forward, cross-entropy, backward, SGD step
  (``zero_grad(set_to_none=True)``).
- ``floor``: ``model.eval()``, forward with the input requiring grad, ``torch.autograd.grad`` of the logits with
  a one-hot ``grad_output`` (the labels) with respect to the input, ``model.train()`` back. What "one extra
  backward pass per batch" costs, the unit of the overhead columns.
- ``attribution``: the attribution alone, as the ``reldrop_fast`` variant's transform computes it (an
  :class:`~reldrop_transforms.attribution.Attributor` with the fast engine, called on the fixed batch): no mask, no
  step. Against ``floor``: how much of a RelDrop step's extra is the attribution itself.
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

This module is also the registry of every case: :data:`CPU_CASES` / :data:`GPU_CASES` (images),
:data:`CPU_POINT_CASES` / :data:`GPU_POINT_CASES` (PointNet++, PointNet and DGCNN, dense and PyG, issue #3 item 7:
run by ``point_cases.PointBench``, variants ``plain``, ``floor``, ``reldrop``, ``published`` and the two mask-stage
variants, float32 only), :data:`CPU_ERASING_CASES` / :data:`GPU_ERASING_CASES` (RelevanceErasing2d / 3d mask stage
against the published per-sample / per-cloud loops, issue #5 item 5: ``erasing_cases.ErasingBench``, the two
mask-stage variants only, float32), :data:`CASES` by name, and :func:`make_bench`, which builds the right bench for
a case. The shared settings, variant names and case dataclasses live in ``common.py`` (re-exported here);
``point_cases.py`` and ``erasing_cases.py`` import only from ``common``, never from this module.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn

from reldrop_transforms import RelevanceDropout2d
from reldrop_transforms.attribution import Attributor, relevance
from reldrop_transforms.functional import fill_dropped, relevance_dropout_mask

from common import (
    ALL_VARIANTS, ALPHA, BETA, EPSILON, LEARNING_RATE, MASK_VARIANTS, MaskedPool, POINT_STEP_VARIANTS,
    POINT_VARIANTS, P, SLOW_VARIANTS, STEP_VARIANTS, VARIANTS, Case, ErasingCase, PointCase, published_composite,
    synchronize,
)
from erasing_cases import ErasingBench

__all__ = [
    "Case", "CPU_CASES", "GPU_CASES", "CASES", "STEP_VARIANTS", "MASK_VARIANTS", "VARIANTS", "SLOW_VARIANTS",
    "ALPHA", "BETA", "P", "EPSILON", "LEARNING_RATE", "Bench", "build_model", "published_composite",
    "published_attribution", "published_mask_loop", "vectorised_mask", "masked_batch_autocast", "synchronize",
    "PointCase", "CPU_POINT_CASES", "GPU_POINT_CASES", "POINT_STEP_VARIANTS", "POINT_VARIANTS", "ALL_VARIANTS",
    "make_bench", "ErasingCase", "CPU_ERASING_CASES", "GPU_ERASING_CASES",
]

# MobileNetV2 and EfficientNet-B0 (depthwise convolutions; EfficientNet also SiLU and squeeze-excitation) next to
# the CNN and the ResNet: 10 classes, batch 32 like ResNet-18; EfficientNet-B0 at 64 px (at 32 px its last stages
# see 1 x 1 maps). Both get warmed-up BatchNorm statistics (BATCHNORM_WARMUP_ARCHS below).
#
# EfficientNet-B0's SGD step runs with learning rate 0 (the same arithmetic; the weights stay as built): its
# epsilon_flat relevance is ~1e12 per image for an output relevance of 1 (both backends agree; the squeeze-excitation
# gates amplify it: with them replaced by identities it is ~1e-2), and a few steps of training on the fixed batch
# take it past float32's range (NaN after ~6 steps at lr 1e-3), which the transforms refuse with a ValueError.
CPU_CASES = (
    Case("small_cnn-32px-b64", "small_cnn", 64, 32, 10),
    Case("resnet18-32px-b32", "resnet18", 32, 32, 100),
    Case("mobilenet_v2-32px-b32", "mobilenet_v2", 32, 32, 10),
    Case("efficientnet_b0-64px-b32", "efficientnet_b0", 32, 64, 10, learning_rate=0.0),
)
# On CUDA MobileNetV2 and EfficientNet-B0 run at their ImageNet size, as ResNet-50 (the issue sets no target for
# them).
GPU_CASES = (
    Case("resnet18-32px-b128", "resnet18", 128, 32, 100),
    Case("resnet18-32px-b512", "resnet18", 512, 32, 100),
    Case("resnet50-224px-b64", "resnet50", 64, 224, 1000),
    Case("mobilenet_v2-224px-b64", "mobilenet_v2", 64, 224, 1000),
    Case("efficientnet_b0-224px-b64", "efficientnet_b0", 64, 224, 1000, learning_rate=0.0),
)

# PointNet++ at 1024 points x 32 clouds takes seconds per step on two shared CPU cores: the CPU cases are 256 x 16;
# the GPU cases are the size. DGCNN: k = 10 neighbours on the CPU (as in tests/models/test_pointnets.py;
# 256 points), its default k = 20 (the DGCNN paper's, at 1024 points) on CUDA.
CPU_POINT_CASES = (
    PointCase("pointnet2-dense-n256-b16", "pointnet2", "dense", 16, 256),
    PointCase("pointnet2-pyg-n256-b16", "pointnet2", "pyg", 16, 256),
    PointCase("pointnet-dense-n256-b16", "pointnet", "dense", 16, 256),
    PointCase("pointnet-pyg-n256-b16", "pointnet", "pyg", 16, 256),
    PointCase("dgcnn-dense-n256-b16", "dgcnn", "dense", 16, 256, k=10),
    PointCase("dgcnn-pyg-n256-b16", "dgcnn", "pyg", 16, 256, k=10),
)
GPU_POINT_CASES = (
    PointCase("pointnet2-dense-n1024-b32", "pointnet2", "dense", 32, 1024),
    PointCase("pointnet2-pyg-n1024-b32", "pointnet2", "pyg", 32, 1024),
    PointCase("pointnet-dense-n1024-b32", "pointnet", "dense", 32, 1024),
    PointCase("pointnet-pyg-n1024-b32", "pointnet", "pyg", 32, 1024),
    PointCase("dgcnn-dense-n1024-b32", "dgcnn", "dense", 32, 1024, k=20),
    PointCase("dgcnn-pyg-n1024-b32", "dgcnn", "pyg", 32, 1024, k=20),
)

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


def make_bench(case: Case | PointCase | ErasingCase, device: str | torch.device = "cpu", precision: str = "fp32",
               seed: int = 0):
    """A :class:`Bench` for an image case, a ``point_cases.PointBench`` for a :class:`PointCase` (imported here, on
    first use: it needs torch_geometric), an ``erasing_cases.ErasingBench`` for an :class:`ErasingCase` (mask stage
    only)."""
    if isinstance(case, ErasingCase):
        return ErasingBench(case, device, precision, seed)
    if isinstance(case, PointCase):
        from point_cases import PointBench

        return PointBench(case, device, precision, seed)
    return Bench(case, device, precision, seed)


# torchvision's builders (random weights); "small_cnn" is built in build_model.
TORCHVISION_ARCHS = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "efficientnet_b0": torchvision.models.efficientnet_b0,
}
# Freshly initialised, these two collapse in eval mode (logits ~1e-10 for MobileNetV2, ~1e-13 for EfficientNet-B0:
# the initial running statistics, mean 0 and variance 1, do not match their activations), and so does their
# relevance (absorbed by the Epsilon rule to ~0; the published loop then sees flat relevance and drops nothing).
# build_model sets their BatchNorm statistics from a few train-mode forwards first, as a trained model has them.
BATCHNORM_WARMUP_ARCHS = ("mobilenet_v2", "efficientnet_b0")
BATCHNORM_WARMUP_BATCHES = 4


def warm_up_batchnorm(model: nn.Module, case: Case, seed: int = 0, batches: int = BATCHNORM_WARMUP_BATCHES) -> None:
    """Set every BatchNorm's running statistics to the mean over ``batches`` train-mode forwards (no grad) of
    random batches of ``case``'s shape, drawn like the bench's images (standard normal: as after ``Normalize``)
    from their own generator; the momenta are restored afterwards."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    generator = torch.Generator().manual_seed(seed + 1)
    shape = (case.batch_size, 3, case.image_size, case.image_size)
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                model(torch.randn(shape, generator=generator))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum


def build_model(case: Case, seed: int = 0) -> nn.Module:
    """The classifier of ``case``, seeded, in train mode (random weights, no downloads).

    ``small_cnn`` is Conv-BatchNorm-ReLU blocks with max pooling, global average pooling and a linear head: small
    enough for two CPU cores. It, torchvision's ResNets, MobileNetV2 and EfficientNet-B0 all run on the fast engine.
    MobileNetV2 and EfficientNet-B0 get their BatchNorm statistics from :func:`warm_up_batchnorm` (see
    :data:`BATCHNORM_WARMUP_ARCHS`).
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
        elif case.arch in TORCHVISION_ARCHS:
            model = TORCHVISION_ARCHS[case.arch](weights=None, num_classes=case.num_classes)
            if case.arch in BATCHNORM_WARMUP_ARCHS:
                warm_up_batchnorm(model, case, seed)
        else:
            raise ValueError(f"arch should be 'small_cnn' or one of {sorted(TORCHVISION_ARCHS)}, but got "
                             f"{case.arch!r}.")
    return model.train()


# --------------------------------------------------------------------------------------------------------------
# The published pixel variant, re-implemented (structure and costs, not the bugs)
# --------------------------------------------------------------------------------------------------------------
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
        learning_rate = LEARNING_RATE if case.learning_rate is None else case.learning_rate
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=learning_rate, momentum=0.9, weight_decay=5e-4)
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
        self.attributor = Attributor(self.model, composite="epsilon_flat", epsilon=EPSILON, backend="fast",
                                     dtype=self.autocast_dtype)
        self._mask_relevance: Tensor | None = None
        self._masked = MaskedPool(lambda: self.masked_batch("fast"))

    # -- precision --------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    @property
    def attribution_precision(self) -> dict[str, str]:
        """Precision in which each variant's attribution runs (``"-"`` for variants without one)."""
        attribution = "bf16 autocast" if self.autocast_dtype is not None else "fp32"
        return {
            "plain": "-", "floor": attribution, "attribution": attribution, "floor_then_step": attribution,
            "reldrop_fast": attribution, "reldrop_zennit": attribution, "published": attribution,
            "mask_vectorised": "-", "mask_loop": "-",
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

    def attribution(self) -> Tensor:
        """The fast engine's relevance of the fixed batch for its labels (under autocast with ``precision="bf16"``, as
        :func:`masked_batch_autocast` computes it); returns the relevance."""
        return self.attributor(self.images, self.labels)

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

    def floor_then_step(self) -> Tensor:
        """The floor, then the plain train step on a batch RelDrop masked (fast engine; the next of
        :data:`common.MASKED_POOL` made on first use): the sequence a RelDrop step with an attribution of exactly one
        floor and a free mask would run; returns the detached loss."""
        self.floor()
        return self.plain_step(self._masked.next(), self.labels)

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
            "attribution": self.attribution,
            "floor_then_step": self.floor_then_step,
            "reldrop_fast": lambda: self.reldrop_step("fast"),
            "reldrop_zennit": lambda: self.reldrop_step("zennit"),
            "published": self.published_step,
            "mask_vectorised": self.mask_vectorised,
            "mask_loop": self.mask_loop,
        }
