"""Train a ResNet-18 on CIFAR-10 or CIFAR-100 with RelDrop (``RelevanceDropout2d``, the paper's pixel variant).

Data: torchvision's ``datasets.CIFAR10`` / ``CIFAR100`` in their python-pickle format under ``--data-root``::

    DATA_ROOT/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
    DATA_ROOT/cifar-100-python/{train, test, meta}

(the unpacked ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``). Nothing is downloaded unless
``--download`` is given. torchvision checks every file's md5 against the official archive;
``--no-integrity-check`` checks only that the files exist (for re-packed or subset copies in the same format, as in
the tests: the files are then read as usual, only the checksum comparison is left out).

Per-sample augmentation runs in the DataLoader workers (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
``ToImage``, ``ToDtype(float32, scale=True)``, ``Normalize`` with the CIFAR statistics); RelDrop runs on whole batches
in the main process through ``RelevanceLoader``, on the model's device, with fill value 0 (the dataset mean after
``Normalize``). Paper settings: ``alpha=0.3, beta=0.5, p=0.3..0.5``.

Example:
    python examples/train_cifar.py --data-root ~/data --dataset cifar100 --epochs 200 \\
        --checkpoint runs/c100.pt            # add --resume to continue it
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, models
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_arguments, add_reldrop_arguments, image_reldrop  # noqa: E402
from common import make_parser, missing_files_error, run, split_pair  # noqa: E402

MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}


def _without_md5(cls: type[datasets.CIFAR10]) -> type[datasets.CIFAR10]:
    """``cls`` with the checksums of its files set to ``None``: torchvision's ``check_integrity`` then only checks
    that each file exists (the archive checksum used by ``download()`` is kept)."""
    return type(f"{cls.__name__}Unchecked", (cls,), {
        "__module__": __name__,
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


CIFAR10Unchecked = _without_md5(datasets.CIFAR10)
CIFAR100Unchecked = _without_md5(datasets.CIFAR100)
DATASETS = {
    "cifar10": (datasets.CIFAR10, CIFAR10Unchecked, 10),
    "cifar100": (datasets.CIFAR100, CIFAR100Unchecked, 100),
}


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_common_arguments(parser, epochs=200, batch_size=128, lr=0.1)
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="cifar10")
    parser.add_argument("--integrity-check", action=argparse.BooleanOptionalAction, default=True,
                        help="compare the files' md5 with the official archive (torchvision's check)")
    parser.add_argument("--model", choices=("resnet18", "tiny"), default="resnet18",
                        help="resnet18: torchvision's, adapted to 32 px (3x3 stem, no max pool); tiny: for tests")
    add_reldrop_arguments(parser, alpha=0.3, beta=0.5, p=0.5, cuda_graphs=True)
    return parser


def build_model(name: str, num_classes: int) -> nn.Module:
    """torchvision ResNet-18 with a CIFAR stem (3x3 stride-1 conv1, no max pool), or a tiny CNN."""
    if name == "resnet18":
        model = models.resnet18(num_classes=num_classes)
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


def build_datasets(args: argparse.Namespace):
    """Train and test sets; raises ``FileNotFoundError`` (expected layout) when files are missing."""
    checked, unchecked, num_classes = DATASETS[args.dataset]
    cls = checked if args.integrity_check else unchecked
    folder = args.data_root / cls.base_folder
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [folder / name for name in names if not (folder / name).is_file()]
    if missing and not args.download:
        layout = f"  {args.data_root}/{cls.base_folder}/{{{', '.join(names)}}}\n  (the unpacked {cls.filename})"
        raise missing_files_error(args.dataset.upper(), args.data_root, missing, layout)
    mean, std = MEAN[args.dataset], STD[args.dataset]
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_tf = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *to_tensor])
    try:
        train = cls(str(args.data_root), train=True, transform=train_tf, download=args.download)
        test = cls(str(args.data_root), train=False, transform=v2.Compose(to_tensor), download=False)
    except RuntimeError as error:
        if "corrupted" not in str(error):
            raise
        raise RuntimeError(
            f"{args.dataset.upper()} files under {folder} did not pass torchvision's md5 check ({error}). For a "
            "re-packed or subset copy in the same format, pass --no-integrity-check."
        ) from error
    return train, test, num_classes


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Parse ``argv``, train, and return the per-epoch history (see ``common.run``): SGD with Nesterov momentum
    0.9, weight decay 5e-4 unless ``--weight-decay`` is given."""
    return run(build_parser(), argv, build_datasets=build_datasets,
               build_model=lambda args, num_classes: build_model(args.model, num_classes),
               make_transform=image_reldrop, optimizer=functools.partial(torch.optim.SGD, momentum=0.9, nesterov=True),
               weight_decay=5e-4, split=split_pair)


if __name__ == "__main__":
    main()
