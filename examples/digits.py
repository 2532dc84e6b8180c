"""Real images for the demo's third section: scikit-learn's handwritten digits, split per class and upsampled.

``sklearn.datasets.load_digits()`` ships inside the scikit-learn wheel: 1,797 grey 8x8 images of the digits 0-9 (about
180 per class), pixel values 0-16; nothing is downloaded. scikit-learn is a development dependency of the demo and the
tests only (pinned in ``requirements-dev.txt``): it is imported inside :func:`load`, so that importing this module, and
the demo's other sections, does not need it.

The split is data-scarce and fixed before any training: a fixed permutation (:data:`SPLIT_SEED`, independent of the
demo's ``--seed``) is drawn, the first :data:`PER_CLASS` digits of each class in that order are the training split and
all others the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["CLASSES", "PER_CLASS", "SPLIT_SEED", "DigitsSplit", "load", "make_splits", "split_per_class", "upsample"]

CLASSES = tuple(str(digit) for digit in range(10))
"""Class names; the label ``k`` is the digit ``k``."""

PER_CLASS = 50
"""Training images per class of the demo's split (500 in all; the other 1,297 are the test split)."""

SPLIT_SEED = 0
"""Seed of the split's permutation, fixed in advance (the training seeds do not change the split)."""


@dataclass
class DigitsSplit:
    """One split of the digits.

    Attributes:
        images: ``(N, 1, S, S)`` float32 in ``[0, 1]`` (the 0-16 pixel values divided by 16, then upsampled).
        labels: ``(N,)`` int64 digit of each image.
        indices: ``(N,)`` int64 row of each image in ``load_digits()``.
    """

    images: Tensor
    labels: Tensor
    indices: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load() -> tuple[Tensor, Tensor]:
    """All 1,797 digits of ``sklearn.datasets.load_digits()`` as tensors.

    Returns:
        ``(images, labels)``: ``(1797, 1, 8, 8)`` float32 in ``[0, 1]`` and ``(1797,)`` int64.

    Raises:
        ImportError: If scikit-learn is not installed (the message says how to install it or skip the section).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "The demo's digits section needs scikit-learn (sklearn.datasets.load_digits, pinned in "
            "requirements-dev.txt): install it with `.venv/bin/python -m pip install -r requirements-dev.txt`, or "
            "leave the section out with `--modalities images,points`."
        ) from error
    data = load_digits()
    images = torch.from_numpy(data.images).float().div(16.0).unsqueeze(1)
    labels = torch.from_numpy(data.target).long()
    return images, labels


def split_per_class(labels: Tensor, per_class: int, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """A class-balanced training split of ``per_class`` samples per class; all other samples are the test split.

    A permutation of all samples is drawn from ``torch.Generator().manual_seed(seed)``; the training split takes the
    first ``per_class`` samples of each class in that order. Both index tensors keep the permutation's order (so a
    prefix of the test split is a random subset of it).

    Args:
        labels: ``(N,)`` class index of every sample, classes ``0 .. K-1``.
        per_class: Training samples per class.
        seed: Seed of the permutation.

    Returns:
        ``(train_indices, test_indices)``, disjoint, together every index ``0 .. N-1`` once.

    Raises:
        ValueError: If ``per_class < 1`` or a class has no more than ``per_class`` samples (its test split would be
            empty).
    """
    if per_class < 1:
        raise ValueError(f"per_class should be >= 1, but got {per_class} instead.")
    order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(int(seed)))
    counts = torch.bincount(labels)
    if int(counts.min()) <= per_class:
        raise ValueError(f"per_class should be below the smallest class size {int(counts.min())} (so that every "
                         f"class is in the test split too), but got {per_class} instead.")
    in_train = torch.zeros(labels.shape[0], dtype=torch.bool)
    for cls in range(counts.shape[0]):
        in_train[order[labels[order] == cls][:per_class]] = True
    return order[in_train[order]], order[~in_train[order]]


def upsample(images: Tensor, size: int) -> Tensor:
    """Bilinear upsampling of ``(N, C, H, W)`` images to ``size x size`` (values stay in the input's range)."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def make_splits(size: int, per_class: int = PER_CLASS, seed: int = SPLIT_SEED) -> tuple[DigitsSplit, DigitsSplit]:
    """The demo's training and test splits of the digits, upsampled to ``size x size``.

    Args:
        size: Side of the upsampled images.
        per_class: Training images per class (see :func:`split_per_class`).
        seed: Seed of the split's permutation.

    Returns:
        ``(train, test)``.
    """
    images, labels = load()
    images = upsample(images, size)
    train_idx, test_idx = split_per_class(labels, per_class, seed)
    return (DigitsSplit(images[train_idx], labels[train_idx], train_idx),
            DigitsSplit(images[test_idx], labels[test_idx], test_idx))
