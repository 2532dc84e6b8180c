"""A small synthetic shape-classification dataset with a planted shortcut, generated in code (no download).

Each image is 3x32x32 and shows one object (a disc, square, triangle, cross or ring) at a random position,
scale, rotation and colour on a textured, noisy background. The ground-truth object mask of every image is
returned as well.

The **training** split carries a shortcut: in a fraction ``shortcut_p`` (default 0.9) of its images a small
coloured marker patch in the top-left corner has the colour of the image's class (:data:`MARKER_COLOURS`). In
the **test** split the marker is drawn just as often but with a uniformly random class colour, so it says
nothing about the label: a model that learned to read the marker instead of the shape generalises worse.

Generation is vectorised and driven by one ``torch.Generator`` seeded with ``seed``: the same arguments give
bit-identical tensors. A few thousand images take well under a second.

Images are returned as float32 in ``[0, 1]`` (not normalised). Normalise them yourself, e.g. with
:func:`channel_stats` on the training split, so that a fill value of ``0.0`` means the dataset mean.

Example:
    >>> data = make_split(100, seed=0, train=True)
    >>> data.images.shape, data.labels.dtype, data.masks.dtype
    (torch.Size([100, 3, 32, 32]), torch.int64, torch.bool)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

__all__ = [
    "CLASSES",
    "MARKER_COLOURS",
    "MARKER_SIZE",
    "IMAGE_SIZE",
    "SyntheticSplit",
    "ShapesDataset",
    "make_split",
    "channel_stats",
    "marker_class",
    "marker_region",
]

CLASSES = ("disc", "square", "triangle", "cross", "ring")
"""Class names, in label order."""

MARKER_COLOURS = torch.tensor(
    [
        [1.0, 0.0, 0.0],  # disc: red
        [0.0, 1.0, 0.0],  # square: green
        [0.0, 0.0, 1.0],  # triangle: blue
        [1.0, 1.0, 0.0],  # cross: yellow
        [1.0, 0.0, 1.0],  # ring: magenta
    ]
)
"""The marker colour of each class, ``(num_classes, 3)`` in ``[0, 1]``."""

MARKER_SIZE = 4
"""Side of the square marker patch, in pixels; it sits at rows/columns ``1 .. MARKER_SIZE``."""

IMAGE_SIZE = 32


@dataclass
class SyntheticSplit:
    """One generated split.

    Attributes:
        images: Float32 images in ``[0, 1]``, shape ``(N, 3, 32, 32)``.
        labels: Class indices, int64, shape ``(N,)``.
        masks: Ground-truth object masks, bool, shape ``(N, 32, 32)`` (the marker is never part of it).
        marker_present: Whether the image has a marker, bool, shape ``(N,)``.
        marker_labels: The class whose colour the marker has, int64, shape ``(N,)``; ``-1`` where absent.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    marker_present: Tensor
    marker_labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


class ShapesDataset(Dataset):
    """A ``torch.utils.data.Dataset`` over (already generated, possibly normalised) image and label tensors.

    Args:
        images: Images, shape ``(N, C, H, W)``.
        labels: Class indices, shape ``(N,)``.

    Example:
        >>> split = make_split(8, seed=1)
        >>> image, label = ShapesDataset(split.images, split.labels)[0]
        >>> image.shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images do not match {labels.shape[0]} labels.")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator)


def _shape_masks(labels: Tensor, dx: Tensor, dy: Tensor, radius: Tensor) -> Tensor:
    """Boolean masks of each class's shape given rotated pixel offsets ``dx``, ``dy`` (N, H, W) and ``radius``."""
    r = radius.view(-1, 1, 1)
    dist = torch.sqrt(dx**2 + dy**2)
    disc = dist <= r
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.8 * r
    # Upward triangle: apex at dy = -r, base at dy = +0.75 r; half-width grows linearly downwards.
    half_width = (dy + r) / (1.75 * r) * (0.95 * r)
    triangle = (dy >= -r) & (dy <= 0.75 * r) & (dx.abs() <= half_width)
    arm = 0.32 * r
    cross = ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r))
    ring = (dist <= r) & (dist >= 0.55 * r)
    stacked = torch.stack([disc, square, triangle, cross, ring], dim=1)  # (N, K, H, W)
    return stacked.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *dx.shape[1:])).squeeze(1)


def make_split(
    n: int,
    *,
    seed: int = 0,
    train: bool = True,
    shortcut_p: float = 0.9,
    noise_std: float = 0.06,
) -> SyntheticSplit:
    """Generate one split of the shapes dataset.

    Args:
        n: Number of images.
        seed: Seed of the ``torch.Generator`` that drives everything; equal arguments give equal tensors.
        train: ``True`` for the training split (marker colour = class colour), ``False`` for the test split
            (marker colour = a uniformly random class, independent of the label).
        shortcut_p: Fraction of images that carry a marker, in ``[0, 1]``.
        noise_std: Standard deviation of the per-pixel Gaussian noise.

    Returns:
        The split; images are float32 in ``[0, 1]``, not normalised.

    Shape:
        - images: (n, 3, 32, 32), float32.
        - labels, marker_present, marker_labels: (n,).
        - masks: (n, 32, 32), bool.
    """
    if n < 0:
        raise ValueError(f"n should be >= 0, but got {n} instead.")
    if not 0.0 <= shortcut_p <= 1.0:
        raise ValueError(f"shortcut_p should be in the interval [0.0, 1.0], but got {shortcut_p} instead.")
    g = torch.Generator().manual_seed(int(seed))
    size = IMAGE_SIZE
    num_classes = len(CLASSES)

    labels = torch.randint(0, num_classes, (n,), generator=g)

    # Background: a random base colour, a low-frequency texture (upsampled noise) and fine stripes.
    base = 0.2 + 0.6 * _rand(g, n, 3, 1, 1)
    coarse = F.interpolate(_rand(g, n, 3, 6, 6) - 0.5, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    freq = 0.3 + 0.6 * _rand(g, n, 1, 1, 1)
    phase = 2 * math.pi * _rand(g, n, 1, 1, 1)
    angle = math.pi * _rand(g, n, 1, 1, 1)
    stripes = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
    background = base + 0.35 * coarse + 0.08 * stripes

    # Object: class shape at a random centre, radius and rotation, in a colour that contrasts with the base.
    radius = 5.0 + 5.0 * _rand(g, n)
    margin = radius + 1.0
    cx = margin + (size - 1 - 2 * margin) * _rand(g, n)
    cy = margin + (size - 1 - 2 * margin) * _rand(g, n)
    theta = (_rand(g, n) - 0.5) * (math.pi / 3)  # +-30 degrees
    ox = xx.unsqueeze(0) - cx.view(-1, 1, 1)
    oy = yy.unsqueeze(0) - cy.view(-1, 1, 1)
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    dx = cos * ox + sin * oy
    dy = -sin * ox + cos * oy
    masks = _shape_masks(labels, dx, dy, radius)
    # Per channel |object - base| lies in [0.3, 0.7]: always visible, never a class-specific colour.
    colour = torch.remainder(base + 0.3 + 0.4 * _rand(g, n, 3, 1, 1), 1.0)
    shading = 1.0 + 0.15 * (_rand(g, n, 1, size, size) - 0.5)
    images = torch.where(masks.unsqueeze(1), colour * shading, background)
    images = images + noise_std * torch.randn((n, 3, size, size), generator=g)

    # Shortcut marker in the top-left corner, drawn over everything (and removed from the object mask).
    marker_present = _rand(g, n) < shortcut_p
    random_class = torch.randint(0, num_classes, (n,), generator=g)
    marker_labels = labels.clone() if train else random_class
    marker_labels = torch.where(marker_present, marker_labels, torch.full_like(marker_labels, -1))
    region = torch.zeros(size, size, dtype=torch.bool)
    region[1 : 1 + MARKER_SIZE, 1 : 1 + MARKER_SIZE] = True
    marker_pixels = region.unsqueeze(0) & marker_present.view(-1, 1, 1)
    marker_rgb = MARKER_COLOURS[marker_labels.clamp(min=0)].view(n, 3, 1, 1)
    images = torch.where(marker_pixels.unsqueeze(1), marker_rgb, images)
    masks = masks & ~marker_pixels

    return SyntheticSplit(
        images=images.clamp(0.0, 1.0).contiguous(),
        labels=labels,
        masks=masks,
        marker_present=marker_present,
        marker_labels=marker_labels,
    )


def marker_region() -> Tensor:
    """The marker's pixels as a bool mask of shape ``(32, 32)``."""
    region = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    region[1 : 1 + MARKER_SIZE, 1 : 1 + MARKER_SIZE] = True
    return region


def marker_class(images: Tensor, tolerance: float = 0.05) -> Tensor:
    """Read the marker back from ``[0, 1]`` images: the class whose colour fills the marker, ``-1`` if none.

    Used to check the shortcut from the pixels alone (independently of the generator's bookkeeping).

    Shape:
        - images: (N, 3, 32, 32), in ``[0, 1]``.
        - output: (N,), int64.
    """
    patch = images[:, :, 1 : 1 + MARKER_SIZE, 1 : 1 + MARKER_SIZE]  # (N, 3, s, s)
    diff = (patch.unsqueeze(1) - MARKER_COLOURS.view(1, -1, 3, 1, 1).to(images)).abs()  # (N, K, 3, s, s)
    matches = diff.amax(dim=(2, 3, 4)) <= tolerance  # every marker pixel within tolerance of the colour
    found = matches.any(1)
    return torch.where(found, matches.float().argmax(1), torch.full_like(found, -1, dtype=torch.long))


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of a batch ``(N, C, H, W)``, each of shape ``(C,)``."""
    return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))
