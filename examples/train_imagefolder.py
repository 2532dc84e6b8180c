"""Train a ResNet-18/50 on an ImageNet-style ``ImageFolder`` tree with RelDrop (``RelevanceDropout2d``).

Data: torchvision's ``datasets.ImageFolder`` layout under ``--data-root``, one folder per class in each split::

    DATA_ROOT/train/<class>/<image>.{jpg,jpeg,png,...}
    DATA_ROOT/val/<class>/<image>.{jpg,jpeg,png,...}

(ImageNet's validation images must be sorted into class folders first). ``val`` must have the same class folders
as ``train``. Nothing is ever downloaded.

Per-sample pipeline in the DataLoader workers: training ``RandomResizedCrop(--image-size)``,
``RandomHorizontalFlip``; evaluation ``Resize(image_size * 256 / 224)``, ``CenterCrop(--image-size)``; both then
``ToImage``, ``ToDtype(float32, scale=True)``, ``Normalize`` (ImageNet statistics). RelDrop runs on whole batches in
the main process through ``RelevanceLoader``, on the model's device, filling with 0 (the mean after ``Normalize``).

Example:
    python examples/train_imagefolder.py --data-root /data/imagenet --model resnet50 --epochs 90 \\
        --batch-size 256 --num-workers 16 --checkpoint runs/in1k.pt
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, models
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_arguments, add_reldrop_arguments, image_reldrop, layout_at  # noqa: E402
from common import make_parser, missing_files_error, run, split_pair  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = """  DATA_ROOT/train/<class>/<image>.{jpg,jpeg,png,...}
  DATA_ROOT/val/<class>/<image>.{jpg,jpeg,png,...}   (the same class folders as train)"""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_common_arguments(parser, epochs=90, batch_size=256, lr=0.1, download=False)
    parser.add_argument("--image-size", type=int, default=224, help="training/evaluation crop size")
    parser.add_argument("--model", choices=("resnet18", "resnet50", "tiny"), default="resnet50",
                        help="torchvision ResNet (random init), or a tiny CNN for tests")
    add_reldrop_arguments(parser, alpha=0.3, beta=0.5, p=0.5, cuda_graphs=True)
    return parser


def build_model(name: str, num_classes: int) -> nn.Module:
    if name == "resnet18":
        return models.resnet18(num_classes=num_classes)
    if name == "resnet50":
        return models.resnet50(num_classes=num_classes)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


def _visible_image(path: str) -> bool:
    """An image file ``ImageFolder`` would take, unless hidden: macOS's AppleDouble ``._<name>.JPEG`` files (copied or
    tarred from a Mac, next to every image) are not images, and PIL cannot read them mid-epoch."""
    return not os.path.basename(path).startswith(".") and has_file_allowed_extension(path, IMG_EXTENSIONS)


class VisibleImageFolder(datasets.ImageFolder):
    """``ImageFolder`` without hidden entries: no class from a hidden folder (``.ipynb_checkpoints``), no hidden file
    (:func:`_visible_image`)."""

    def __init__(self, root: str, **kwargs) -> None:
        super().__init__(root, is_valid_file=_visible_image, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(entry.name for entry in os.scandir(directory)
                         if entry.is_dir() and not entry.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: index for index, name in enumerate(classes)}


def build_datasets(args: argparse.Namespace):
    """Train and validation ``ImageFolder`` sets; clear errors for a missing or inconsistent tree."""
    missing = [args.data_root / split for split in ("train", "val") if not (args.data_root / split).is_dir()]
    if missing:
        raise missing_files_error("ImageFolder", args.data_root, missing, layout_at(LAYOUT, args.data_root),
                                  download_hint=False)
    size = args.image_size
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    train_tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *to_tensor])
    val_tf = v2.Compose([v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size), *to_tensor])
    train = VisibleImageFolder(str(args.data_root / "train"), transform=train_tf)
    val = VisibleImageFolder(str(args.data_root / "val"), transform=val_tf)
    if val.classes != train.classes:
        raise ValueError(
            f"val should have the same class folders as train, but train has {len(train.classes)} "
            f"({train.classes[:5]}...) and val {len(val.classes)} ({val.classes[:5]}...)."
        )
    return train, val, len(train.classes)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Parse ``argv``, train, and return the per-epoch history (see ``common.run``): SGD with momentum 0.9,
    weight decay 1e-4 unless ``--weight-decay`` is given; evaluated on ``val``."""
    return run(build_parser(), argv, build_datasets=build_datasets,
               build_model=lambda args, num_classes: build_model(args.model, num_classes),
               make_transform=image_reldrop, optimizer=functools.partial(torch.optim.SGD, momentum=0.9),
               weight_decay=1e-4, split=split_pair)


if __name__ == "__main__":
    main()
