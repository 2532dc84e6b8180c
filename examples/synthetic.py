"""Small synthetic shape-classification datasets with a planted shortcut, generated in code (no download).

Images (:func:`make_split`) and point clouds (:func:`make_point_split`, described there: parametric shapes with a
class-revealing spurious point cluster in the training split only). The image data:

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


# -- point clouds ---------------------------------------------------------------------------------------------------
SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
"""Point-cloud class names; the label ``k`` is ``SHAPES[k]``."""

CLUSTER_CENTRES = torch.tensor(
    [
        [1.6, 0.0, 1.2],
        [-1.6, 0.0, 1.2],
        [0.0, 1.6, -1.2],
        [0.0, -1.6, -1.2],
        [0.0, 0.0, 2.0],
    ]
)
"""Centre of each class's spurious cluster, ``(num_classes, 3)``, outside every object (objects fit in radius 1.7)."""


@dataclass
class PointSplit:
    """One generated split of the point-cloud dataset.

    Attributes:
        points: Float32 clouds, shape ``(N, P, 3)`` (``P`` points per cloud, fixed within a split).
        labels: Class indices (:data:`SHAPES`), int64, shape ``(N,)``.
        object_points: ``True`` on the object's points, ``False`` on the spurious cluster's, shape ``(N, P)``.
        cluster_present: Whether the cloud has a spurious cluster, bool, shape ``(N,)``.
        cluster_labels: The class whose position the cluster has, int64, shape ``(N,)``; ``-1`` where absent.
        distinct_points: How many distinct object points the cloud was resampled from, int64, shape ``(N,)``.
    """

    points: Tensor
    labels: Tensor
    object_points: Tensor
    cluster_present: Tensor
    cluster_labels: Tensor
    distinct_points: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _shape_surfaces(g: torch.Generator, n: int, m: int) -> Tensor:
    """``m`` surface points of every shape for ``n`` clouds: ``(n, len(SHAPES), m, 3)``, each shape about unit size."""
    u, v, w = _rand(g, n, m), _rand(g, n, m), _rand(g, n, m)
    # Sphere, radius 1.
    sphere = _unit(torch.randn((n, m, 3), generator=g))
    # Cube, half side 0.8: a random face, a uniform point on it.
    face = torch.randint(0, 6, (n, m), generator=g)
    axis, sign = face // 2, (face % 2).float() * 2 - 1
    cube = (torch.stack([u, v, w], -1) * 1.6 - 0.8)
    cube = cube.scatter(-1, axis.unsqueeze(-1), (0.8 * sign).unsqueeze(-1))
    # Cylinder, radius 0.7, height 2: 3/4 of the points on the side, 1/4 on the caps.
    phi = 2 * math.pi * u
    side = w < 0.75
    rad = torch.where(side, torch.full_like(v, 0.7), 0.7 * torch.sqrt(v))
    cap = torch.where(_rand(g, n, m) < 0.5, -torch.ones_like(v), torch.ones_like(v))
    z = torch.where(side, 2 * v - 1, cap)
    cylinder = torch.stack([rad * torch.cos(phi), rad * torch.sin(phi), z], -1)
    # Cone, apex at z = 1, base radius 0.9 at z = -1: lateral density grows with the radius; 1/4 on the base.
    t = torch.sqrt(v)  # 0 at the apex, 1 at the base
    lateral = w < 0.75
    cone_r = torch.where(lateral, 0.9 * t, 0.9 * torch.sqrt(_rand(g, n, m)))
    cone_z = torch.where(lateral, 1 - 2 * t, -torch.ones_like(t))
    cone = torch.stack([cone_r * torch.cos(phi), cone_r * torch.sin(phi), cone_z], -1)
    # Torus, tube centre radius 0.75, tube radius 0.3.
    psi = 2 * math.pi * v
    ring = 0.75 + 0.3 * torch.cos(psi)
    torus = torch.stack([ring * torch.cos(phi), ring * torch.sin(phi), 0.3 * torch.sin(psi)], -1)
    return torch.stack([sphere, cube, cylinder, cone, torus], dim=1)


def _rotations(g: torch.Generator, n: int, max_tilt: float) -> Tensor:
    """Random rotations ``(n, 3, 3)``: a uniform turn about z, then a tilt of up to ``max_tilt`` about x."""
    yaw = 2 * math.pi * _rand(g, n)
    tilt = (2 * _rand(g, n) - 1) * max_tilt
    c, s = torch.cos(yaw), torch.sin(yaw)
    zeros, ones = torch.zeros(n), torch.ones(n)
    rz = torch.stack([c, -s, zeros, s, c, zeros, zeros, zeros, ones], -1).view(n, 3, 3)
    c, s = torch.cos(tilt), torch.sin(tilt)
    rx = torch.stack([ones, zeros, zeros, zeros, c, -s, zeros, s, c], -1).view(n, 3, 3)
    return rx @ rz


def make_point_split(
    n: int,
    *,
    seed: int = 0,
    train: bool = True,
    num_points: int = 256,
    shortcut_p: float = 0.9,
    cluster_size: int = 24,
    noise_std: float = 0.02,
    max_tilt: float = math.pi / 6,
) -> PointSplit:
    """Generate one split of the point-cloud shapes dataset (no download; vectorised; deterministic per seed).

    Each cloud samples the surface of one parametric shape (:data:`SHAPES`) at ``d`` distinct points, with ``d``
    drawn uniformly from ``[num_points // 4, num_points]`` (the density varies from cloud to cloud), resamples them
    with replacement to ``num_points`` points, rotates the cloud (a uniform turn about z and a tilt of up to
    ``max_tilt`` about x), scales it by ``U(0.7, 1.2)`` and adds Gaussian noise.

    In a fraction ``shortcut_p`` of the clouds, the last ``cluster_size`` points are replaced by a tight spurious
    cluster (standard deviation 0.08) centred at :data:`CLUSTER_CENTRES` of the cloud's class in the **training**
    split, and of a uniformly random class in the **test** split (``train=False``): the training split carries a
    class-revealing shortcut that the test split does not. ``object_points`` marks the object's points.

    Args:
        n: Number of clouds.
        seed: Seed of the ``torch.Generator`` that drives everything; equal arguments give equal tensors.
        train: Training split (cluster position = class) or test split (cluster position random).
        num_points: Points per cloud.
        shortcut_p: Fraction of clouds with a spurious cluster, in ``[0, 1]``.
        cluster_size: Points in the cluster, in ``[0, num_points)``.
        noise_std: Standard deviation of the Gaussian noise on every coordinate.
        max_tilt: Largest tilt about x, in radians.

    Shape:
        - points: (n, num_points, 3), float32.
        - labels, cluster_present, cluster_labels, distinct_points: (n,).
        - object_points: (n, num_points), bool.

    Example:
        >>> make_point_split(4, seed=0, num_points=64).points.shape
        torch.Size([4, 64, 3])
    """
    if n < 0:
        raise ValueError(f"n should be >= 0, but got {n} instead.")
    if num_points < 4:
        raise ValueError(f"num_points should be >= 4, but got {num_points} instead.")
    if not 0 <= cluster_size < num_points:
        raise ValueError(f"cluster_size should be in [0, {num_points}), but got {cluster_size} instead.")
    if not 0.0 <= shortcut_p <= 1.0:
        raise ValueError(f"shortcut_p should be in the interval [0.0, 1.0], but got {shortcut_p} instead.")
    g = torch.Generator().manual_seed(int(seed))
    num_classes = len(SHAPES)
    labels = torch.randint(0, num_classes, (n,), generator=g)

    surfaces = _shape_surfaces(g, n, num_points)  # (n, K, P, 3)
    surface = surfaces[torch.arange(n), labels]  # (n, P, 3)
    distinct = torch.randint(num_points // 4, num_points + 1, (n,), generator=g)
    picks = (_rand(g, n, num_points) * distinct.view(-1, 1)).long().clamp(max=num_points - 1)
    cloud = surface.gather(1, picks.unsqueeze(-1).expand(-1, -1, 3))
    scale = 0.7 + 0.5 * _rand(g, n, 1, 1)
    cloud = scale * cloud @ _rotations(g, n, max_tilt).transpose(1, 2)

    present = _rand(g, n) < shortcut_p
    random_class = torch.randint(0, num_classes, (n,), generator=g)
    cluster_labels = labels.clone() if train else random_class
    cluster_labels = torch.where(present, cluster_labels, torch.full_like(cluster_labels, -1))
    cluster = CLUSTER_CENTRES[cluster_labels.clamp(min=0)].view(n, 1, 3) + 0.08 * torch.randn(
        (n, num_points, 3), generator=g)
    in_cluster = (torch.arange(num_points) >= num_points - cluster_size).view(1, -1) & present.view(-1, 1)
    cloud = torch.where(in_cluster.unsqueeze(-1), cluster, cloud)
    cloud = cloud + noise_std * torch.randn((n, num_points, 3), generator=g)
    return PointSplit(
        points=cloud.float().contiguous(),
        labels=labels,
        object_points=~in_cluster,
        cluster_present=present,
        cluster_labels=cluster_labels,
        distinct_points=distinct,
    )
