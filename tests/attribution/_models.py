"""Tiny models shared by the attribution tests (built in code, no downloads)."""

import torch
from torch import nn
from torchvision.models import resnet18


def small_cnn(num_classes: int = 5) -> nn.Sequential:
    """Sequential CNN with BatchNorm after bias-free convolutions (zennit 1.0.0 adds a `bias` key there)."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(16, num_classes),
    )


def tiny_resnet(num_classes: int = 5) -> nn.Module:
    return resnet18(num_classes=num_classes)


def warm_up_batchnorm(model: nn.Module, shape=(16, 3, 16, 16), steps: int = 3, seed: int = 0) -> nn.Module:
    """A few train-mode forwards so that BatchNorm statistics are not the identity."""
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(shape, generator=gen) * 2 + 0.5)
    model.train(was_training)
    return model


class Boom(nn.Module):
    """Raises in forward while armed: a model that fails mid-forward."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x):
        if self.armed:
            raise RuntimeError("boom: failure in the middle of the forward")
        return x
