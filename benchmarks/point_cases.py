"""Point-cloud benchmark cases (issue #3 item 7): the step functions they time, and the published 3D baseline.

Imported on first use by :func:`cases.make_bench` (it needs torch_geometric, whose import takes seconds); imports
only from ``common`` among the benchmark modules. Every case is a point-cloud classifier
(:class:`reldrop_transforms.models.PointNet2`, ``PointNet`` or ``DGCNN``, random weights), an SGD optimizer and
one fixed batch of random clouds (xyz in the unit ball, then 3 channels of unit normals), either dense
``(B, N, 6)`` or the same clouds as a PyG ``Batch`` (``pos`` (B*N, 3), ``x`` (B*N, 3), ``y``). The variants,
measured in one process on the same model:

- ``plain``: ``model.train()``, forward, cross-entropy, backward, SGD step.
- ``floor``: ``model.eval()``, forward with the points (dense) or ``pos`` and ``x`` (PyG) requiring grad,
  ``torch.autograd.grad`` of the label logits (one-hot ``grad_output``) w.r.t. them, ``model.train()`` back.
- ``attribution``: the attribution alone, as the ``reldrop`` variant's transform computes it (an
  :class:`~reldrop_transforms.attribution.Attributor` with the transform's settings, called on the fixed batch:
  ``attribute_graph`` for PyG): no mask, no step.
- ``reldrop``: ``RelevanceDropout3d(model, alpha=0.5, beta=0.5, p=1.0, fill="zero")`` with its **default backend**
  (``"auto"``) on the batch, then the plain step on the masked batch. Which engine ``auto`` actually runs is
  observed once per bench (:func:`probe_engine`: the transform's attribution settings on two clouds, watching
  whether a zennit composite gets registered) and reported in :attr:`PointBench.attribution_precision` (the fast
  engine runs all three models today). A ``RelevanceBackendWarning`` (no longer emitted by the library) would
  still be recorded in :attr:`PointBench.backend_warnings`.
- ``published``: the published 3D path, re-implemented here (nothing copied; METHOD.md sections 2 and 5): zennit's
  attribution of the whole batch with the paper's composite (Flat first linear layer, Epsilon elsewhere,
  BatchNorm merged by zennit's ``SequentialMergeBatchNorm``), built anew per batch, then **one cloud at a time**:
  that cloud's relevance and points to numpy, channel sum, min/max normalisation, numpy noise, threshold, dropped
  points set to 0 in every channel, copied back into a tensor on the device; then the plain step. Its bugs are not
  reproduced (flat relevance gives no NaN; the model is left in train mode). The published code copied the whole
  batch to numpy and back once per sample; this baseline copies only the cloud at hand, so it is the cheaper of
  the two (the speed-ups against it are lower bounds).
- ``mask_vectorised`` / ``mask_loop``: the mask stage and the fill alone on one fixed relevance (computed once):
  channel sum, :func:`~reldrop_transforms.functional.relevance_dropout_mask`,
  :func:`~reldrop_transforms.functional.keep_least_relevant` and
  :func:`~reldrop_transforms.functional.fill_points` (vectorised; with ``batch=`` for PyG), against the per-cloud
  numpy loop of ``published``.

Only float32: ``RelevanceDropout3d`` has no ``dtype`` argument.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from reldrop_transforms.attribution import Attributor, RelevanceBackendWarning, relevance, relevance_graph
from reldrop_transforms.functional import fill_points, keep_least_relevant, relevance_dropout_mask
from reldrop_transforms.models import DGCNN, PointNet, PointNet2
from reldrop_transforms.transforms import RelevanceDropout3d

from common import EPSILON, LEARNING_RATE, POINT_VARIANTS, MaskedPool, PointCase, published_composite

__all__ = [
    "POINT_ALPHA", "POINT_BETA", "POINT_P", "PointBench", "build_point_model", "make_clouds", "probe_engine",
    "published_point_attribution", "published_point_loop", "vectorised_point_mask",
]

# The paper's point-cloud settings (Fig. 4); p = 1.0: every cloud attributed (the published 3D path had no p).
POINT_ALPHA = 0.5
POINT_BETA = 0.5
POINT_P = 1.0


def build_point_model(case: PointCase, seed: int = 0) -> nn.Module:
    """The classifier of ``case`` with its default widths (DGCNN: ``k=case.k`` where given), seeded, in train
    mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if case.arch == "pointnet2":
            model = PointNet2(case.in_channels, case.num_classes)
        elif case.arch == "pointnet":
            model = PointNet(case.in_channels, case.num_classes)
        elif case.arch == "dgcnn":
            kwargs = {} if case.k is None else {"k": case.k}
            model = DGCNN(case.in_channels, case.num_classes, **kwargs)
        else:
            raise ValueError(f"arch should be 'pointnet2', 'pointnet' or 'dgcnn', but got {case.arch!r}.")
    return model.train()


def make_clouds(case: PointCase, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(points, labels)``: ``(B, N, C)`` clouds, xyz uniform in the unit ball (PointNet2's radii assume about the
    unit sphere), then ``C - 3`` channels of a random unit vector per point (normals); labels ``(B,)``."""
    b, n, c = case.batch_size, case.num_points, case.in_channels
    direction = torch.randn(b, n, 3, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    radius = torch.rand(b, n, 1, generator=generator).pow(1.0 / 3.0)
    parts = [direction * radius]
    if c > 3:
        extra = torch.randn(b, n, c - 3, generator=generator)
        parts.append(extra / extra.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    labels = torch.randint(0, case.num_classes, (b,), generator=generator)
    return torch.cat(parts, dim=-1), labels


def probe_engine(attribute: Callable[[], object]) -> str:
    """Which engine ``attribute()`` ran: ``"zennit"`` if it registered a zennit composite on a model (every zennit
    attribution does, through ``Composite.register``), else ``"fast"``. Watches zennit's public class, not the
    library's internals, and no warning: what ran is observed, not predicted."""
    from zennit.core import Composite

    registered = []
    register = Composite.register

    def watched(self, module):
        registered.append(type(self).__name__)
        return register(self, module)

    Composite.register = watched
    try:
        attribute()
    finally:
        Composite.register = register
    return "zennit" if registered else "fast"


def _replace(batch: Batch, **tensors: Tensor) -> Batch:
    """A shallow copy of ``batch`` with some node tensors replaced (the input keeps its own)."""
    out = copy.copy(batch)
    for key, value in tensors.items():
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------------------------
# The published 3D path, re-implemented (structure and costs, not the bugs)
# --------------------------------------------------------------------------------------------------------------
def published_point_attribution(model: nn.Module, inputs: Tensor | Batch, labels: Tensor,
                                num_classes: int) -> Tensor | dict[str, Tensor]:
    """zennit attribution of the whole batch as the published code did it: eval mode, a fresh composite (the
    paper's, see :func:`cases.published_composite`) per batch, one-hot targets from ``torch.eye``, train mode back.
    Dense: relevance of the points ``(B, N, C)``; PyG: ``{"pos": (N, 3), "x": (N, F)}``."""
    was_training = model.training
    model.eval()
    try:
        composite = published_composite(model)
        device = labels.device
        targets_one_hot = torch.eye(num_classes, device=device)[labels.long()]
        with composite.context(model):
            if isinstance(inputs, Tensor):
                leaves = (inputs.detach().clone().requires_grad_(True),)
                logits = model(leaves[0])
            else:
                keys = [key for key in ("pos", "x") if isinstance(getattr(inputs, key, None), Tensor)]
                leaves = tuple(inputs[key].detach().clone().requires_grad_(True) for key in keys)
                logits = model(_replace(inputs, **dict(zip(keys, leaves))))
            grads = torch.autograd.grad(logits, leaves, targets_one_hot)
    finally:
        if was_training:
            model.train()
    if isinstance(inputs, Tensor):
        return grads[0]
    return dict(zip(keys, grads))


def _numpy_drop(rel: np.ndarray, alpha: float, beta: float, rng: np.random.Generator) -> np.ndarray:
    """The per-cloud rule in numpy: min/max normalisation (flat relevance: no ranking, no NaN), noise, threshold."""
    low, high = rel.min(), rel.max()
    span = high - low
    if span > np.finfo(rel.dtype).eps * max(abs(high), abs(low)):
        rel_norm = (rel - low) / span
    else:
        rel_norm = np.zeros_like(rel)
    noise = rng.random(rel.shape[0], dtype=rel.dtype)
    return alpha * noise + (1.0 - alpha) * rel_norm >= 1.0 - beta


def published_point_loop(inputs: Tensor | Batch, attribution: Tensor | dict[str, Tensor], *,
                         alpha: float = POINT_ALPHA, beta: float = POINT_BETA,
                         rng: np.random.Generator | None = None) -> Tensor | Batch:
    """The published per-cloud numpy loop: for each cloud, its relevance and points to numpy (a device-host copy
    and a synchronisation each), channel sum, min/max normalisation, noise, threshold, dropped points set to 0 in
    every channel, the cloud copied back to a tensor on the device. The input is not modified.

    Shape:
        - dense: inputs (B, N, C), attribution (B, N, C); output (B, N, C).
        - PyG: a ``Batch`` with ``pos`` (N, 3), ``x`` (N, F); attribution ``{"pos": (N, 3), "x": (N, F)}``;
          output a new ``Batch`` (same clouds, dropped points zeroed in ``pos`` and ``x``).
    """
    rng = rng if rng is not None else np.random.default_rng()
    if isinstance(inputs, Tensor):
        device = inputs.device
        out = torch.empty_like(inputs)
        for i in range(inputs.shape[0]):
            rel = attribution[i].detach().cpu().numpy().sum(-1)
            cloud = inputs[i].detach().cpu().numpy().copy()
            cloud[_numpy_drop(rel, alpha, beta, rng)] = 0.0
            out[i] = torch.from_numpy(cloud).to(device)
        return out
    keys = list(attribution)
    device = inputs.pos.device
    outs = {key: torch.empty_like(inputs[key]) for key in keys}
    ptr = inputs.ptr.tolist()
    for start, stop in zip(ptr[:-1], ptr[1:]):
        rel = sum(attribution[key][start:stop].detach().cpu().numpy().sum(-1) for key in keys)
        drop = _numpy_drop(rel, alpha, beta, rng)
        for key in keys:
            cloud = inputs[key][start:stop].detach().cpu().numpy().copy()
            cloud[drop] = 0.0
            outs[key][start:stop] = torch.from_numpy(cloud).to(device)
    return _replace(inputs, **outs)


def vectorised_point_mask(inputs: Tensor | Batch, attribution: Tensor | dict[str, Tensor], *,
                          alpha: float = POINT_ALPHA, beta: float = POINT_BETA,
                          generator: torch.Generator | None = None) -> Tensor | Batch:
    """The mask stage and fill of :class:`~reldrop_transforms.RelevanceDropout3d` at ``p = 1``, ``fill="zero"``:
    channel sum, mask rule, keep the least relevant point of a cloud that would lose all, fill (vectorised over the
    clouds, no synchronisation; PyG through the ``batch`` vector). Shapes as :func:`published_point_loop`."""
    if isinstance(inputs, Tensor):
        per_point = attribution.sum(-1)
        mask = relevance_dropout_mask(per_point, alpha, beta, generator=generator)
        mask = keep_least_relevant(mask, per_point)
        return fill_points(inputs, mask, "zero")
    batch, num = inputs.batch, inputs.num_graphs
    per_point = sum(rel.sum(-1) for rel in attribution.values())
    mask = relevance_dropout_mask(per_point, alpha, beta, generator=generator, batch=batch, num_segments=num)
    mask = keep_least_relevant(mask, per_point, batch=batch, num_segments=num)
    return _replace(inputs, **{key: fill_points(inputs[key], mask, "zero", batch=batch, num_segments=num)
                               for key in attribution})


# --------------------------------------------------------------------------------------------------------------
# A point case on a device
# --------------------------------------------------------------------------------------------------------------
class PointBench:
    """A point case instantiated on a device: model, SGD optimizer, one fixed batch and the variants.

    ``inputs`` is the dense ``(B, N, C)`` tensor or the PyG ``Batch``; ``points`` is always the dense tensor (the
    same clouds). Only ``precision="fp32"``.
    """

    variant_names = POINT_VARIANTS
    slow_variants = ("published",)

    def __init__(self, case: PointCase, device: str | torch.device = "cpu", precision: str = "fp32",
                 seed: int = 0) -> None:
        if precision != "fp32":
            raise ValueError(f"point cases run in fp32 only (RelevanceDropout3d has no dtype), got {precision!r}.")
        self.case = case
        self.device = torch.device(device)
        self.precision = precision
        self.model = build_point_model(case, seed).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=5e-4)
        points, labels = make_clouds(case, torch.Generator().manual_seed(seed))
        self.points = points.to(self.device)
        self.labels = labels.to(self.device)
        if case.layout == "dense":
            self.inputs: Tensor | Batch = self.points
        elif case.layout == "pyg":
            clouds = [Data(pos=cloud[:, :3].clone(), x=cloud[:, 3:].clone() if case.in_channels > 3 else None,
                           y=label.view(1)) for cloud, label in zip(points, labels)]
            self.inputs = Batch.from_data_list(clouds).to(self.device)
        else:
            raise ValueError(f"layout should be 'dense' or 'pyg', but got {case.layout!r}.")
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.transform = RelevanceDropout3d(self.model, alpha=POINT_ALPHA, beta=POINT_BETA, p=POINT_P, fill="zero",
                                            composite="epsilon_flat", epsilon=EPSILON, generator=self.generator)
        self.half_generator = torch.Generator(self.device).manual_seed(seed + 1)
        self.half_transform = RelevanceDropout3d(self.model, alpha=POINT_ALPHA, beta=POINT_BETA, p=0.5, fill="zero",
                                                 composite="epsilon_flat", epsilon=EPSILON,
                                                 generator=self.half_generator)
        self.attributor = Attributor(self.model, composite=self.transform.composite, epsilon=self.transform.epsilon,
                                     backend=self.transform.backend)
        self.backend = self._probe_backend()
        self.backend_warnings: list[str] = []
        self._mask_relevance: Tensor | dict[str, Tensor] | None = None
        self._masked = MaskedPool(self.masked_batch)

    @property
    def is_pyg(self) -> bool:
        return self.case.layout == "pyg"

    def _probe_backend(self) -> str:
        """Which engine the transform's attribution runs for this model and input kind (its backend, ``"auto"``,
        composite and epsilon, on two clouds of the batch; the transform's generator is not touched):
        ``"fast"`` or ``"zennit"``, as observed by :func:`probe_engine`."""
        t = self.transform
        if self.is_pyg:
            small = Batch.from_data_list(self.inputs.index_select([0, 1]))
            return probe_engine(lambda: relevance_graph(self.model, small, small.y, keys=t.keys,
                                                        composite=t.composite, epsilon=t.epsilon, backend=t.backend,
                                                        check_finite_values=False))
        return probe_engine(lambda: relevance(self.model, self.points[:2], self.labels[:2], composite=t.composite,
                                              epsilon=t.epsilon, backend=t.backend, check_finite_values=False))

    @property
    def attribution_precision(self) -> dict[str, str]:
        """Precision and engine of each variant's attribution (``"-"`` for variants without one): the ``reldrop``
        entry names the engine ``backend="auto"`` was seen to run (``"fast"``, or ``"zennit (auto fallback)"``)."""
        backend = "fast" if self.backend == "fast" else "zennit (auto fallback)"
        return {"plain": "-", "plain_masked": "-", "floor": "fp32", "attribution": f"fp32, {backend}",
                "floor_then_step": "fp32",
                "reldrop": f"fp32, {backend}", "reldrop_half": f"fp32, {backend}, p = 0.5",
                "published": "fp32, zennit", "mask_vectorised": "-", "mask_loop": "-"}

    # -- the variants -----------------------------------------------------------------------------------------
    def plain_step(self, inputs: Tensor | Batch | None = None) -> Tensor:
        """One plain train step on ``inputs`` (the fixed batch by default); returns the detached loss."""
        inputs = self.inputs if inputs is None else inputs
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(inputs), self.labels)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def floor(self) -> tuple[Tensor, ...]:
        """Eval forward and the gradient of the label logits w.r.t. the points (dense) or ``pos`` and ``x`` (PyG)."""
        self.model.eval()
        try:
            if self.is_pyg:
                keys = [key for key in ("pos", "x") if isinstance(getattr(self.inputs, key, None), Tensor)]
                leaves = tuple(self.inputs[key].detach().requires_grad_(True) for key in keys)
                logits = self.model(_replace(self.inputs, **dict(zip(keys, leaves))))
            else:
                leaves = (self.points.detach().requires_grad_(True),)
                logits = self.model(leaves[0])
            grad_output = nn.functional.one_hot(self.labels, logits.shape[1]).to(logits.dtype)
            gradients = torch.autograd.grad(logits, leaves, grad_output)
        finally:
            self.model.train()
        return gradients

    def attribution(self) -> Tensor | dict[str, Tensor]:
        """The relevance of the fixed batch for its labels, with the ``reldrop`` transform's settings: a tensor of the
        points' shape (dense), or ``{key: relevance}`` for the PyG batch's node tensors."""
        if self.is_pyg:
            return self.attributor.attribute_graph(self.inputs, self.labels, keys=self.transform.keys)
        return self.attributor(self.points, self.labels)

    def masked_batch(self, transform: RelevanceDropout3d | None = None) -> Tensor | Batch:
        """The fixed batch after ``transform`` (default: the ``p = 1`` ``RelevanceDropout3d``, default backend); the
        fallback's ``RelevanceBackendWarning`` (said once per model class) is recorded, not raised."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RelevanceBackendWarning)
            transform = self.transform if transform is None else transform
            out = transform(self.inputs) if self.is_pyg else transform(self.points, self.labels)
        self.backend_warnings += [str(w.message) for w in caught if issubclass(w.category, RelevanceBackendWarning)]
        for w in caught:
            if not issubclass(w.category, RelevanceBackendWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out[0] if isinstance(out, (tuple, list)) else out

    def plain_masked_step(self) -> Tensor:
        """The plain step on batches RelDrop masked (a :class:`common.MaskedPool`): what training on masked clouds costs
        without the attribution; returns the detached loss."""
        return self.plain_step(self._masked.next())

    def floor_then_step(self) -> Tensor:
        """The floor, then the plain step on a batch RelDrop masked (a :class:`common.MaskedPool`): the sequence a RelDrop
        step with an attribution of exactly one floor and a free mask stage would run; returns the detached loss."""
        self.floor()
        return self.plain_step(self._masked.next())

    def reldrop_step(self) -> Tensor | Batch:
        """RelDrop on the fixed batch, then the plain step on the masked batch; returns the masked batch."""
        masked = self.masked_batch()
        self.plain_step(masked)
        return masked

    def reldrop_half_step(self) -> Tensor | Batch:
        """RelDrop at ``p = 0.5`` on the fixed batch (the clouds whose coin came up are attributed, as a batch of their
        own for PyG), then the plain step on the masked batch; returns the masked batch."""
        masked = self.masked_batch(self.half_transform)
        self.plain_step(masked)
        return masked

    def published_step(self) -> Tensor | Batch:
        """The published 3D path (re-implemented), then the plain step; returns the masked batch."""
        attribution = published_point_attribution(self.model, self.inputs, self.labels, self.case.num_classes)
        masked = published_point_loop(self.inputs, attribution, rng=self.rng)
        self.plain_step(masked)
        return masked

    @property
    def mask_relevance(self) -> Tensor | dict[str, Tensor]:
        """A fixed relevance for the mask-stage variants (:meth:`attribution`, computed once)."""
        if self._mask_relevance is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RelevanceBackendWarning)
                self._mask_relevance = self.attribution()
        return self._mask_relevance

    def mask_vectorised(self) -> Tensor | Batch:
        """Mask stage and fill alone, vectorised; returns the masked batch."""
        return vectorised_point_mask(self.inputs, self.mask_relevance, generator=self.generator)

    def mask_loop(self) -> Tensor | Batch:
        """Mask stage and fill alone, the published per-cloud numpy loop; returns the masked batch."""
        return published_point_loop(self.inputs, self.mask_relevance, rng=self.rng)

    def variants(self) -> dict[str, Callable[[], object]]:
        """Every variant as a callable without arguments, in :attr:`variant_names` order."""
        return {
            "plain": self.plain_step,
            "plain_masked": self.plain_masked_step,
            "floor": self.floor,
            "attribution": self.attribution,
            "floor_then_step": self.floor_then_step,
            "reldrop": self.reldrop_step,
            "reldrop_half": self.reldrop_half_step,
            "published": self.published_step,
            "mask_vectorised": self.mask_vectorised,
            "mask_loop": self.mask_loop,
        }
