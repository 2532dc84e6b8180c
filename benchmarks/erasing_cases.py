"""Erasing mask-stage benchmark (issue #5 item 5): the vectorised RelevanceErasing kernels against the published
per-sample (2D) and per-cloud (3D) loops, on one fixed relevance tensor. No model: only the mask stage and its fill.

- ``erasing2d``: ``relevance_erasing_mask`` (Block: one rectangle per image, area fraction ``U(0.02, 0.4)``,
  log-uniform aspect ratio in ``[0.3, 1/0.3]``, centred on one of the ``top_k`` most relevant pixels, clipped at the
  border) and ``fill_dropped``, against :func:`published_erasing_loop`, a re-implementation (written here, nothing
  copied) of the published loop of METHOD.md section 2: for each image, ``topk`` of that image's channel-summed
  relevance read back with ``.item()``, Python ``random``/``math`` for the area and the ratio, up to 100 tries, a
  slicing assignment of the fill.
- ``erasing3d``: ``relevance_ball_mask`` (the points within ``U(radius)`` x the bounding-box diagonal of one of the
  ``top_k`` most relevant points) and a zero fill, dense ``(B, N, C)``, against :func:`published_ball_loop`, a
  per-cloud loop with a numpy round trip per cloud like the published 3D path (relevance and points of one cloud
  ``.cpu().numpy()``, numpy top-k, radius and distances, zero fill, ``torch.from_numpy(...).to(device)`` back).

Both variants are named as the other mask-stage variants (``mask_vectorised``, ``mask_loop``), so that
``overhead.py`` times them interleaved and puts them in its mask tables. Among the benchmark modules this one imports
only ``common``; ``cases.make_bench`` builds an :class:`ErasingBench` for an ``ErasingCase``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from reldrop_transforms.functional import (
    fill_dropped,
    relevance_ball_mask,
    relevance_erasing_mask,
)

from common import MASK_VARIANTS, ErasingCase

__all__ = [
    "BALL_RADIUS",
    "ERASING_RATIO",
    "ERASING_SCALE",
    "TOP_K",
    "ErasingBench",
    "published_ball_loop",
    "published_erasing_loop",
    "vectorised_ball",
    "vectorised_erasing",
]

ERASING_SCALE = (0.02, 0.4)
ERASING_RATIO = (0.3, 1 / 0.3)
BALL_RADIUS = (0.1, 0.3)
TOP_K = 1  # the shipped config
TRIES = 100  # the published loop's


def published_erasing_loop(images: Tensor, relevance: Tensor, *, scale: Sequence[float] = ERASING_SCALE,
                           ratio: Sequence[float] = ERASING_RATIO, top_k: int = TOP_K, value: float = 0.0,
                           rng: random.Random | None = None) -> Tensor:
    """The published per-sample Block erasing loop: per image, a ``topk`` of its relevance and ``.item()`` reads
    (host-device synchronisations), then Random Erasing in Python (``random`` and ``math``, up to 100 tries)
    with the rectangle centred on the chosen pixel, clipped at the border, filled by slicing assignment.

    Shape:
        - images: (B, C, H, W) (not modified: the loop fills a clone).
        - relevance: (B, C, H, W).
        - output: (B, C, H, W).
    """
    rng = rng or random
    outputs = images.clone()
    _, _, height, width = images.shape
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for i in range(images.shape[0]):
        rel = relevance[i].sum(0)
        if rel.max().item() - rel.min().item() > 0:
            best = rel.flatten().topk(min(top_k, area)).indices
            index = best[rng.randrange(best.shape[0])].item()
        else:  # flat relevance: no ranking, a random pixel
            index = rng.randrange(area)
        row, col = divmod(index, width)
        for _ in range(TRIES):
            target = rng.uniform(scale[0], scale[1]) * area
            aspect = math.exp(rng.uniform(log_low, log_high))
            h = round(math.sqrt(target * aspect))
            w = round(math.sqrt(target / aspect))
            if 0 < h < height and 0 < w < width:
                top, left = row - h // 2, col - w // 2
                outputs[i, :, max(top, 0):min(top + h, height), max(left, 0):min(left + w, width)] = value
                break
    return outputs


def vectorised_erasing(images: Tensor, relevance: Tensor, *, value: float = 0.0,
                       generator: torch.Generator | None = None) -> Tensor:
    """The mask stage of ``RelevanceErasing2d`` (Block): channel sum, ``relevance_erasing_mask``, ``fill_dropped``."""
    mask = relevance_erasing_mask(relevance.sum(1), scale=ERASING_SCALE, ratio=ERASING_RATIO, top_k=TOP_K,
                                  generator=generator)
    return fill_dropped(images, mask, value)


def published_ball_loop(points: Tensor, relevance: Tensor, *, radius: Sequence[float] = BALL_RADIUS,
                        top_k: int = TOP_K, rng: np.random.Generator | None = None) -> Tensor:
    """A per-cloud ball-erasing loop with a numpy round trip per cloud (as the published 3D path): the cloud's
    relevance and points to numpy, a centre among its ``top_k`` most relevant points, radius ``U(radius)`` x the
    bounding-box diagonal, distances, the points within zeroed in every channel, back to a tensor on the device.

    Shape:
        - points: (B, N, C), xyz in the first 3 channels (not modified).
        - relevance: (B, N, C).
        - output: (B, N, C).
    """
    rng = rng or np.random.default_rng()
    device = points.device
    out = torch.empty_like(points)
    for i in range(points.shape[0]):
        rel = relevance[i].detach().cpu().numpy().sum(-1)
        cloud = points[i].detach().cpu().numpy().copy()
        xyz = cloud[:, :3]
        if rel.max() > rel.min():
            k = min(top_k, rel.shape[0])
            best = np.argpartition(-rel, k - 1)[:k]
            centre = best[rng.integers(k)]
        else:  # flat relevance: a random centre
            centre = rng.integers(rel.shape[0])
        diagonal = np.linalg.norm(xyz.max(0) - xyz.min(0))
        r = rng.uniform(radius[0], radius[1]) * diagonal
        cloud[np.linalg.norm(xyz - xyz[centre], axis=1) <= r] = 0.0
        out[i] = torch.from_numpy(cloud).to(device)
    return out


def vectorised_ball(points: Tensor, relevance: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """The mask stage of ``RelevanceErasing3d`` (dense): channel sum, ``relevance_ball_mask``, zero fill."""
    mask = relevance_ball_mask(relevance.sum(-1), points[..., :3], radius=BALL_RADIUS, top_k=TOP_K,
                               generator=generator)
    return fill_dropped(points, mask, 0.0, channel_dim=-1)


class ErasingBench:
    """An :class:`common.ErasingCase` on a device: one fixed batch and relevance, and the two mask-stage variants.

    2D: images ``randn(B, 3, H, W)`` (as after ``Normalize``), relevance ``rand(B, 3, H, W)``. 3D: dense clouds
    ``(B, N, 6)``, xyz uniform in the unit ball plus random unit normals, relevance ``rand(B, N, 6)``.
    """

    variant_names = MASK_VARIANTS
    slow_variants = ()  # tens of ms at most: both variants get the full repeats

    def __init__(self, case: ErasingCase, device: str | torch.device = "cpu", precision: str = "fp32",
                 seed: int = 0) -> None:
        if precision != "fp32":
            raise ValueError(f"erasing cases run in fp32 only, but got {precision!r}.")
        self.case = case
        self.device = torch.device(device)
        self.precision = precision
        generator = torch.Generator().manual_seed(seed)
        if case.kind == "erasing2d":
            shape = (case.batch_size, 3, case.size, case.size)
            self.inputs = torch.randn(shape, generator=generator).to(self.device)
            self.relevance = torch.rand(shape, generator=generator).to(self.device)
        elif case.kind == "erasing3d":
            xyz = torch.randn(case.batch_size, case.size, 3, generator=generator)
            xyz = xyz / xyz.norm(dim=-1, keepdim=True) * torch.rand(case.batch_size, case.size, 1,
                                                                   generator=generator) ** (1 / 3)
            normals = torch.randn(case.batch_size, case.size, 3, generator=generator)
            normals = normals / normals.norm(dim=-1, keepdim=True)
            self.inputs = torch.cat([xyz, normals], -1).to(self.device)
            self.relevance = torch.rand(self.inputs.shape, generator=generator).to(self.device)
        else:
            raise ValueError(f"kind should be 'erasing2d' or 'erasing3d', but got {case.kind!r}.")
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)

    @property
    def attribution_precision(self) -> dict[str, str]:
        return {name: "-" for name in MASK_VARIANTS}

    def mask_vectorised(self) -> Tensor:
        if self.case.kind == "erasing2d":
            return vectorised_erasing(self.inputs, self.relevance, generator=self.generator)
        return vectorised_ball(self.inputs, self.relevance, generator=self.generator)

    def mask_loop(self) -> Tensor:
        if self.case.kind == "erasing2d":
            return published_erasing_loop(self.inputs, self.relevance, rng=self.rng)
        return published_ball_loop(self.inputs, self.relevance, rng=self.np_rng)

    def variants(self) -> dict[str, Callable[[], Tensor]]:
        return {"mask_vectorised": self.mask_vectorised, "mask_loop": self.mask_loop}
