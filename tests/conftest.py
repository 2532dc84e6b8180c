"""Shared fixtures: devices, tiny models built in code, small image batches. No downloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

NUM_CLASSES = 5

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_DEVICES)
def device(request) -> str:
    """``"cpu"`` always, ``"cuda"`` where a GPU is present."""
    return request.param


@pytest.fixture
def num_classes() -> int:
    return NUM_CLASSES


def _build_model(num_classes: int = NUM_CLASSES, in_channels: int = 3, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, num_classes),
        )
        # Non-trivial BatchNorm statistics and affine parameters, as after some training.
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.2, 0.2)
    return model  # left in train mode, as during training


@pytest.fixture
def make_model():
    """Factory of tiny classifiers: Conv2d-BatchNorm2d-ReLU-AdaptiveAvgPool2d-Flatten-Linear, seeded."""
    return _build_model


@pytest.fixture
def model(device) -> nn.Module:
    """A tiny classifier with ``NUM_CLASSES`` outputs on ``device`` (train mode)."""
    return _build_model().to(device)


@pytest.fixture
def make_batch():
    """Factory of a seeded batch ``(images (B, C, H, W) float, labels (B,) int64)``."""

    def make(batch_size: int = 8, channels: int = 3, size: int = 12, *, num_classes: int = NUM_CLASSES,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(batch_size, channels, size, size, generator=g, dtype=dtype)
        labels = torch.randint(0, num_classes, (batch_size,), generator=g)
        return images.to(device), labels.to(device)

    return make


@pytest.fixture
def batch(make_batch, device):
    """``(images (8, 3, 12, 12) float32, labels (8,) int64)`` on ``device``."""
    return make_batch(device=device)
