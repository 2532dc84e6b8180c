"""RelDrop demo: images and point clouds with a planted shortcut, and real handwritten digits, trained with and without
relevance-driven dropout.

The first two sections' data are generated in code (``examples/synthetic.py``, no download):

* **images**: five shapes on textured backgrounds (3x32x32). In the training split a coloured marker in the top-left
  corner names the class in 90% of the images; in the test split the marker has a random class colour.
* **point clouds**: five parametric shapes (sphere, cube, cylinder, cone, torus) with noise, random rotation and
  scale and a varying number of distinct points, resampled to a fixed size. In 90% of the training clouds a small
  spurious cluster sits at a class-specific position; in the test split its position is random.

For each seed, the same small model (same initialisation, same batch order) is trained once per method:

* images, a small CNN: no augmentation, ``v2.RandomErasing`` (per image), ``RelevanceDropout2d``,
  ``RelevanceErasing2d``; all fill with 0.0 in normalised space (the training mean) and use ``p=0.5``;
* point clouds, a small PointNet (``reldrop_transforms.models.PointNet``) on dense ``(B, N, 3)`` batches: no
  augmentation, random point dropout (PointNet++'s: per cloud a rate ``r ~ U(0, 0.875)``, each point dropped with
  probability ``r``) and ``RelevanceDropout3d(alpha=0.5, beta=0.5)``; dropped points are filled with the cloud's first
  kept point (PointNet++'s convention; for a max-pooling PointNet that equals removing them).

The third section uses real images that ship with scikit-learn (``examples/digits.py``;
``sklearn.datasets.load_digits``, no download): 1,797 grey 8x8 handwritten digits, upsampled bilinearly to 16x16, in a
data-scarce split fixed in advance (50 training images per class, the other 1,297 for testing). The same CNN (one
input channel) is trained with the same four image methods and the same schedule. There is no planted shortcut and no
object mask here; instead of the share of relevance on the object it reports how spread the relevance is: the share
of the pixels that hold half of the absolute relevance.

Then it measures, on the test split: accuracy, the occlusion curve (accuracy as the most relevant 0% to 50% of the
pixels / points are removed, in order of each model's own LRP relevance, as the paper's Fig. 4) and its area, and the
share of absolute relevance on the ground-truth object (pixels inside the object mask / points of the object rather
than of the spurious cluster). It writes ``report.md`` and PNG figures into ``--out`` and prints the folder. Every
number in them is measured in the run that wrote them.

Run it with ``make demo`` or::

    .venv/bin/python examples/demo.py            # the default run (5-7 minutes on 2 lightly loaded CPU cores)
    .venv/bin/python examples/demo.py --quick    # a smoke run (seconds)
    .venv/bin/python examples/demo.py --long     # more data, epochs and 5 seeds (estimated 40 minutes, not timed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # synthetic.py and digits.py sit next to this file

import digits  # noqa: E402  (imports scikit-learn only when the digits are loaded)
import synthetic  # noqa: E402

from reldrop_transforms import RelevanceDropout2d, RelevanceErasing2d, RelevanceLoader  # noqa: E402
from reldrop_transforms.attribution import relevance  # noqa: E402
from reldrop_transforms.functional import fill_dropped, fill_points, relevance_dropout_mask  # noqa: E402

# Sizes of the three run lengths. "img_*": images; "pc_*": point clouds; "dig_*": digits ("dig_per_class" training
# images per class, at most "dig_test" test images, upsampled to "dig_size" x "dig_size"). The digits use the image
# section's epochs and CNN width; batch 32 rather than 128 because their training split is 8x smaller (500 images).
# All fixed before any digits result was seen.
PRESETS: dict[str, dict[str, int]] = {
    "quick": {"seeds": 2, "img_epochs": 1, "img_train": 256, "img_test": 128, "img_width": 8, "img_batch": 64,
              "pc_epochs": 1, "pc_train": 128, "pc_test": 64, "pc_points": 64, "pc_batch": 32,
              "dig_epochs": 1, "dig_per_class": 20, "dig_test": 200, "dig_size": 16, "dig_width": 8, "dig_batch": 32},
    "default": {"seeds": 3, "img_epochs": 10, "img_train": 4000, "img_test": 1000, "img_width": 12, "img_batch": 128,
                "pc_epochs": 12, "pc_train": 1500, "pc_test": 500, "pc_points": 256, "pc_batch": 64,
                "dig_epochs": 10, "dig_per_class": digits.PER_CLASS, "dig_test": 1297, "dig_size": 16,
                "dig_width": 12, "dig_batch": 32},
    "long": {"seeds": 5, "img_epochs": 15, "img_train": 8000, "img_test": 2000, "img_width": 16, "img_batch": 128,
             "pc_epochs": 25, "pc_train": 4000, "pc_test": 1000, "pc_points": 512, "pc_batch": 64,
             "dig_epochs": 15, "dig_per_class": digits.PER_CLASS, "dig_test": 1297, "dig_size": 32, "dig_width": 16,
             "dig_batch": 32},
}
MODALITIES = ("images", "points", "digits")

# The paper's settings: images (pixel variant) alpha=0.3, beta=0.5; point clouds alpha=beta=0.5.
IMG_ALPHA, IMG_BETA, IMG_P = 0.3, 0.5, 0.5
PC_ALPHA, PC_BETA = 0.5, 0.5
PC_MAX_DROPOUT = 0.875  # PointNet++'s random_point_dropout
FRACTIONS = [i / 20 for i in range(11)]  # 0%, 5%, ..., 50% of the inputs removed

IMAGE_METHODS = ("no augmentation", "RandomErasing", "RelevanceDropout2d", "RelevanceErasing2d")
POINT_METHODS = ("no augmentation", "random point dropout", "RelevanceDropout3d")
RELDROP_IMAGE = "RelevanceDropout2d"
RELDROP_POINTS = "RelevanceDropout3d"


# -- command line --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; sizes not given come from the chosen preset (``--quick``, default, ``--long``)."""
    parser = argparse.ArgumentParser(
        description=(
            "Train a small CNN (images) and a small PointNet (point clouds) on synthetic data with a training-only "
            "shortcut, and the CNN on scikit-learn's handwritten digits (50 per class), without augmentation, with "
            "random baselines and with RelDrop; write report.md and figures."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 epoch, 2 seeds (seconds)")
    length.add_argument("--long", action="store_true", help="longer run: more data, epochs and 5 seeds")
    for key, value in PRESETS["default"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {value} (quick {PRESETS['quick'][key]}, long {PRESETS['long'][key]})")
    parser.add_argument("--seed", type=int, default=0, help="first seed; seeds are seed, seed+1, ... (default 0)")
    parser.add_argument("--modalities", default=",".join(MODALITIES),
                        help="comma-separated sections to run: images, points, digits (default all three; digits "
                             "needs scikit-learn)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "long" if args.long else "default"
    args.preset = preset
    for key, value in PRESETS[preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} should be >= 1, but got {getattr(args, key)}.")
    if args.threads < 1:
        parser.error(f"--threads should be >= 1, but got {args.threads}.")
    args.modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    if not args.modalities or any(m not in MODALITIES for m in args.modalities):
        parser.error(f"--modalities should list some of {', '.join(MODALITIES)}, but got {args.modalities}.")
    return args


# -- models --------------------------------------------------------------------------------------------------------
def make_cnn(width: int, num_classes: int, in_channels: int = 3) -> nn.Sequential:
    """A small CNN: four 3x3 conv-BatchNorm-ReLU blocks (two with stride 2), global average pool, linear.

    A plain ``nn.Sequential`` of supported layers, so the fast LRP engine attributes it exactly.

    Args:
        width: Channels of the first block (the others have 2x and 4x).
        num_classes: Outputs.
        in_channels: Image channels (3 for the synthetic images, 1 for the digits).
    """

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, width, 1), *block(width, 2 * width, 2), *block(2 * width, 2 * width, 1),
        *block(2 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


def make_pointnet(num_classes: int) -> nn.Module:
    """A small PointNet (shared MLP 3-32-64-128, max pool, head 64) for dense ``(B, N, 3)`` clouds."""
    from reldrop_transforms.models import PointNet

    return PointNet(3, num_classes, hidden=(32, 64, 128), head=(64,), dropout=0.2)


# -- data helpers --------------------------------------------------------------------------------------------------
class PerSampleTransform(Dataset):
    """Apply a per-sample transform (e.g. ``v2.RandomErasing``) to the images of a dataset."""

    def __init__(self, dataset: Dataset, transform: Callable[[Tensor], Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.dataset[index]
        return self.transform(image), label


class BatchTransformed:
    """An iterable of ``transform(inputs, labels)`` over a loader (for transforms that need no model)."""

    def __init__(self, loader: DataLoader, transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for inputs, labels in self.loader:
            yield self.transform(inputs, labels)


def random_point_dropout(generator: torch.Generator) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """PointNet++'s random point dropout on dense batches: per cloud ``r ~ U(0, 0.875)``, each point dropped with
    probability ``r``, dropped points replaced by the cloud's first kept point (the first point is always kept)."""

    def transform(points: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _ = points.shape
        rate = PC_MAX_DROPOUT * torch.rand((b, 1), generator=generator)
        mask = torch.rand((b, n), generator=generator) < rate
        mask[:, 0] = False
        return fill_points(points, mask, "first"), labels

    return transform


# -- training ------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What one (method, seed) training run produced."""

    method: str
    seed: int
    train_acc: list[float] = field(default_factory=list)  # per epoch, on the (augmented) batches as trained
    test_acc: list[float] = field(default_factory=list)  # per epoch, eval mode
    epoch_seconds: list[float] = field(default_factory=list)
    dropped: list[float] = field(default_factory=list)  # share of points dropped: the untrained, then the trained model
    curve: list[float] = field(default_factory=list)  # occlusion curve (accuracy per entry of FRACTIONS)
    object_share: float = float("nan")
    spread: float = float("nan")  # share of the inputs that hold half of the absolute relevance (digits)


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int = 250) -> float:
    """Top-1 accuracy (fraction) in eval mode; the model's train/eval flag is restored."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(inputs[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
                  for i in range(0, inputs.shape[0], batch_size))
    model.train(was_training)
    return correct / max(1, inputs.shape[0])


def train(model: nn.Module, batches: Iterable, epochs: int, run: Run, evaluate: Callable[[], float],
          bar: tqdm) -> None:
    """Train ``model`` in place (AdamW, one-cycle schedule), recording accuracies, times and drop fractions.

    Args:
        model: The model, already initialised.
        batches: An iterable of ``(inputs, labels)`` (augmented where the method augments) with ``len``.
        epochs: Number of epochs.
        run: Where the measurements go.
        evaluate: Test accuracy of the current model (not timed).
        bar: The epoch progress bar to advance.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * len(batches),
                                                    pct_start=0.2)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        start = time.perf_counter()
        correct = seen = 0
        for inputs, labels in batches:
            logits = model(inputs)
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += int((logits.argmax(1) == labels).sum())
            seen += labels.shape[0]
        run.epoch_seconds.append(time.perf_counter() - start)
        run.train_acc.append(correct / max(1, seen))
        run.test_acc.append(evaluate())
        bar.update(1)
        bar.set_postfix(method=run.method, seed=run.seed, test=f"{100 * run.test_acc[-1]:.0f}%")


# -- metrics -------------------------------------------------------------------------------------------------------
def input_relevance(model: nn.Module, inputs: Tensor, labels: Tensor, channel_dim: int,
                    batch_size: int = 250) -> Tensor:
    """LRP relevance of the true class per pixel / point (summed over channels)."""
    parts = [relevance(model, inputs[i : i + batch_size], labels[i : i + batch_size]).sum(channel_dim)
             for i in range(0, inputs.shape[0], batch_size)]
    return torch.cat(parts)


def occlusion_curve(model: nn.Module, inputs: Tensor, labels: Tensor, rel: Tensor,
                    remove: Callable[[Tensor, Tensor], Tensor]) -> list[float]:
    """Accuracy after removing the most relevant ``f`` of the elements, for each ``f`` in ``FRACTIONS``.

    Args:
        rel: Relevance per element, ``(B, H, W)`` or ``(B, N)``; the elements are removed in descending order.
        remove: ``remove(inputs, mask)``: the inputs with the masked elements removed.
    """
    flat = rel.flatten(1)
    order = flat.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    curve = []
    for fraction in FRACTIONS:
        mask = (rank < round(fraction * flat.shape[1])).view_as(rel)
        curve.append(accuracy(model, remove(inputs, mask), labels))
    return curve


def area(curve: list[float]) -> float:
    """Area under an occlusion curve over FRACTIONS (trapezoids), divided by the width: a mean accuracy."""
    total = sum((FRACTIONS[i + 1] - FRACTIONS[i]) * (curve[i] + curve[i + 1]) / 2 for i in range(len(curve) - 1))
    return total / (FRACTIONS[-1] - FRACTIONS[0])


def object_share(rel: Tensor, on_object: Tensor) -> float:
    """Mean over samples of the share of absolute relevance on the object: ``sum |R| on object / sum |R|``."""
    absolute = rel.abs().flatten(1)
    inside = (absolute * on_object.flatten(1)).sum(1)
    return float((inside / absolute.sum(1).clamp(min=1e-12)).mean())


def relevance_spread(rel: Tensor) -> float:
    """Mean over samples of the share of the elements (pixels / points) that hold half of the absolute relevance.

    Per sample, the smallest number of elements whose absolute relevance adds up to at least half of the total,
    divided by the number of elements: ``1 / n`` if one element holds half of it, about ``0.5`` if all hold the same.
    Higher: the relevance is spread over more of the input.

    Args:
        rel: Relevance per element, ``(B, H, W)`` or ``(B, N)``.
    """
    absolute = rel.abs().flatten(1).double()
    cumulative = absolute.sort(dim=1, descending=True).values.cumsum(1)
    needed = (cumulative < 0.5 * cumulative[:, -1:]).sum(1) + 1
    return float((needed.double() / absolute.shape[1]).mean())


# -- the three experiments -----------------------------------------------------------------------------------------
@dataclass
class Experiment:
    """The runs of one modality and what the figures need."""

    modality: str
    methods: tuple[str, ...]
    runs: list[Run]
    setup: str
    figures: list[Path] = field(default_factory=list)
    seconds: float = float("nan")  # wall time of the section (training, metrics and its own figures)


def train_image_method(make_model: Callable[[], nn.Module], initial: dict[str, Tensor], method: str, seed: int,
                       x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, epochs: int,
                       batch_size: int, bar: tqdm) -> tuple[Run, nn.Module, Tensor]:
    """Train one image method from the seed's shared initialisation and measure it on the test split.

    Every method of a seed gets the same initial weights, the same batch order and the same global random stream
    (``v2.RandomErasing`` draws from it); the RelDrop transforms draw from their own generator. All methods fill with
    0.0 in normalised space (the training mean).

    Args:
        make_model: Builds the CNN (called after seeding; ``initial`` is then loaded into it).
        initial: The seed's initial ``state_dict``.
        method: One of ``IMAGE_METHODS``.
        seed: The seed of the batch order and the augmentations.
        x_train: Normalised training images ``(N, C, H, W)``.
        y_train: Training labels ``(N,)``.
        x_test: Normalised test images.
        y_test: Test labels.
        epochs: Training epochs.
        batch_size: Training batch size.
        bar: The epoch progress bar.

    Returns:
        ``(run, model, rel)``: the run with accuracies, times and occlusion curve filled in, the trained model, and
        its LRP relevance of the true class on the test images, summed over channels, ``(N_test, H, W)``.
    """
    torch.manual_seed(seed)  # the same global random stream (v2.RandomErasing draws from it)
    model = make_model()
    model.load_state_dict(initial)
    dataset = synthetic.ShapesDataset(x_train, y_train)
    order = torch.Generator().manual_seed(seed)
    if method == "RandomErasing":
        erase = v2.RandomErasing(p=IMG_P, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0.0)
        loader = DataLoader(PerSampleTransform(dataset, erase), batch_size=batch_size, shuffle=True, generator=order)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=order)
    batches: Iterable = loader
    noise = torch.Generator().manual_seed(seed + 1)
    if method == "RelevanceDropout2d":
        batches = RelevanceLoader(loader, RelevanceDropout2d(model, alpha=IMG_ALPHA, beta=IMG_BETA, p=IMG_P,
                                                             value=0.0, generator=noise))
    elif method == "RelevanceErasing2d":
        batches = RelevanceLoader(loader, RelevanceErasing2d(model, p=IMG_P, scale=(0.02, 0.4), top_k=1,
                                                             value=0.0, generator=noise))
    run = Run(method, seed)
    train(model, batches, epochs, run, lambda: accuracy(model, x_test, y_test), bar)
    rel = input_relevance(model, x_test, y_test, channel_dim=1)
    run.curve = occlusion_curve(model, x_test, y_test, rel, lambda x, m: fill_dropped(x, m, 0.0))
    return run, model, rel


def run_images(args: argparse.Namespace, out: Path, bar: tqdm) -> Experiment:
    """Train and evaluate the image methods for every seed; draw the image figures for the first seed."""
    from reldrop_transforms import viz

    runs: list[Run] = []
    num_classes = len(synthetic.CLASSES)
    for seed in range(args.seed, args.seed + args.seeds):
        train_split = synthetic.make_split(args.img_train, seed=seed, train=True)
        test_split = synthetic.make_split(args.img_test, seed=seed + 10_000, train=False)
        mean, std = synthetic.channel_stats(train_split.images)

        def normalise(x: Tensor) -> Tensor:
            return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

        x_train, x_test = normalise(train_split.images), normalise(test_split.images)
        y_train, y_test = train_split.labels, test_split.labels
        torch.manual_seed(seed)
        initial = make_cnn(args.img_width, num_classes).state_dict()
        models: dict[str, nn.Module] = {}
        for method in IMAGE_METHODS:
            run, model, rel = train_image_method(lambda: make_cnn(args.img_width, num_classes), initial, method, seed,
                                                 x_train, y_train, x_test, y_test, epochs=args.img_epochs,
                                                 batch_size=args.img_batch, bar=bar)
            run.object_share = object_share(rel, test_split.masks)
            runs.append(run)
            models[method] = model

        if seed == args.seed:  # figures of the first seed
            picks = []
            for cls in range(num_classes):
                idx = ((y_train == cls) & train_split.marker_present).nonzero().flatten()
                if idx.numel():
                    picks.append(int(idx[0]))
            images, labels = x_train[picks], y_train[picks]
            figures = []
            for method, name in (("no augmentation", "relevance_images.png"),
                                 (RELDROP_IMAGE, "relevance_images_reldrop.png")):
                rel = relevance(models[method], images, labels)
                mask = relevance_dropout_mask(rel.sum(1), IMG_ALPHA, IMG_BETA,
                                              generator=torch.Generator().manual_seed(seed))
                viz.plot_image_relevance(
                    images, rel, mask, mean=mean, std=std, labels=labels, class_names=synthetic.CLASSES,
                    title=f"Training images (class marker top left): LRP of the '{method}' model, seed {seed},\n"
                          f"and the RelevanceDropout2d mask (alpha={IMG_ALPHA}, beta={IMG_BETA}) it gives",
                    path=out / name)
                figures.append(out / name)
    setup = (
        f"Synthetic shapes, {num_classes} classes, 3x32x32; per seed {args.img_train} training images (class marker in "
        f"about 90%) and {args.img_test} test images (marker of a random class). CNN of width {args.img_width} "
        f"({sum(p.numel() for p in make_cnn(args.img_width, num_classes).parameters())} parameters), "
        f"{args.img_epochs} epochs, batch {args.img_batch}, AdamW with a one-cycle schedule. RandomErasing: "
        f"`v2.RandomErasing(p={IMG_P}, scale=(0.02, 0.4), value=0)` per image; RelevanceDropout2d: alpha={IMG_ALPHA}, "
        f"beta={IMG_BETA}, p={IMG_P}; RelevanceErasing2d: p={IMG_P}, scale=(0.02, 0.4), top_k=1; all fill with 0 "
        "in normalised space (the training mean)."
    )
    return Experiment("images", IMAGE_METHODS, runs, setup, figures)


def run_points(args: argparse.Namespace, out: Path, bar: tqdm) -> Experiment:
    """Train and evaluate the point-cloud methods for every seed; draw the point figures for the first seed."""
    from reldrop_transforms import RelevanceDropout3d, viz

    runs: list[Run] = []
    num_classes = len(synthetic.SHAPES)
    for seed in range(args.seed, args.seed + args.seeds):
        train_split = synthetic.make_point_split(args.pc_train, seed=seed, train=True, num_points=args.pc_points,
                                                 cluster_size=max(2, args.pc_points // 10))
        test_split = synthetic.make_point_split(args.pc_test, seed=seed + 10_000, train=False,
                                                num_points=args.pc_points, cluster_size=max(2, args.pc_points // 10))
        x_train, y_train = train_split.points, train_split.labels
        x_test, y_test = test_split.points, test_split.labels
        dataset = synthetic.ShapesDataset(x_train, y_train)
        torch.manual_seed(seed)
        initial = make_pointnet(num_classes).state_dict()
        models: dict[str, nn.Module] = {}
        for method in POINT_METHODS:
            torch.manual_seed(seed)
            model = make_pointnet(num_classes)
            model.load_state_dict(initial)
            loader = DataLoader(dataset, batch_size=args.pc_batch, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
            noise = torch.Generator().manual_seed(seed + 1)
            batches: Iterable = loader
            if method == "random point dropout":
                batches = BatchTransformed(loader, random_point_dropout(noise))
            elif method == RELDROP_POINTS:
                batches = RelevanceLoader(loader, RelevanceDropout3d(model, alpha=PC_ALPHA, beta=PC_BETA, p=1.0,
                                                                     fill="first", generator=noise))
            run = Run(method, seed)
            if method != "no augmentation":  # measured on a copy of the transform's first batches
                run.dropped = measure_point_drop(model, method, x_train[: args.pc_batch], y_train[: args.pc_batch],
                                                 seed)
            train(model, batches, args.pc_epochs, run, lambda m=model: accuracy(m, x_test, y_test), bar)
            rel = input_relevance(model, x_test, y_test, channel_dim=2)
            run.curve = occlusion_curve(model, x_test, y_test, rel, lambda x, m: fill_points(x, m, "first"))
            run.object_share = object_share(rel, test_split.object_points)
            if method != "no augmentation":  # drop rate of the trained model too
                run.dropped.append(measure_point_drop(model, method, x_train[: args.pc_batch],
                                                      y_train[: args.pc_batch], seed)[0])
            runs.append(run)
            models[method] = model

        if seed == args.seed:
            picks = []
            for cls in range(num_classes):
                idx = ((y_train == cls) & train_split.cluster_present).nonzero().flatten()
                if idx.numel():
                    picks.append(int(idx[0]))
            clouds, labels = x_train[picks], y_train[picks]
            rel = relevance(models[RELDROP_POINTS], clouds, labels).sum(-1)
            mask = relevance_dropout_mask(rel, PC_ALPHA, PC_BETA, generator=torch.Generator().manual_seed(seed))
            viz.plot_point_relevance(
                clouds, rel, mask, labels=labels, class_names=synthetic.SHAPES,
                title=f"Training clouds (with the class-revealing cluster): LRP of the '{RELDROP_POINTS}' model, seed "
                      f"{seed}, and its RelevanceDropout3d mask (alpha={PC_ALPHA}, beta={PC_BETA})",
                path=out / "relevance_points.png")
    setup = (
        f"Synthetic point clouds, {num_classes} shapes ({', '.join(synthetic.SHAPES)}), {args.pc_points} points each "
        f"(resampled from {args.pc_points // 4}-{args.pc_points} distinct surface points), random turn about z, "
        f"tilt up to 30 degrees, scale 0.7-1.2, noise 0.02; per seed {args.pc_train} training clouds (a "
        f"{max(2, args.pc_points // 10)}-point cluster at a class-specific position in about 90%) and {args.pc_test} "
        f"test clouds (cluster at a random class's position). PointNet 3-32-64-128, head 64 "
        f"({sum(p.numel() for p in make_pointnet(num_classes).parameters())} parameters), {args.pc_epochs} epochs, "
        f"batch {args.pc_batch}. Random point dropout: PointNet++'s (rate U(0, {PC_MAX_DROPOUT}) per cloud); "
        f"RelevanceDropout3d: alpha={PC_ALPHA}, beta={PC_BETA}, p=1. Both fill dropped points with the cloud's first "
        "kept point, which for a max-pooling PointNet is the same as removing them."
    )
    return Experiment("points", POINT_METHODS, runs, setup, [out / "relevance_points.png"])


def measure_point_drop(model: nn.Module, method: str, points: Tensor, labels: Tensor, seed: int) -> list[float]:
    """Fraction of points the method drops on one batch for the model as it is (own generator: training unaffected)."""
    from reldrop_transforms import RelevanceDropout3d

    generator = torch.Generator().manual_seed(seed + 2)
    if method == "random point dropout":
        out, _ = random_point_dropout(generator)(points, labels)
    else:
        t = RelevanceDropout3d(model, alpha=PC_ALPHA, beta=PC_BETA, p=1.0, fill="first", generator=generator)
        out, _ = t(points, labels)
    return [float((out != points).any(-1).float().mean())]


def run_digits(args: argparse.Namespace, out: Path, bar: tqdm) -> Experiment:
    """Train and evaluate the image methods on scikit-learn's handwritten digits for every seed (one fixed split);
    draw the digits' relevance figure for the first seed."""
    from reldrop_transforms import viz

    train_split, test_split = digits.make_splits(args.dig_size, per_class=args.dig_per_class)  # imports sklearn
    import sklearn
    mean, std = synthetic.channel_stats(train_split.images)

    def normalise(x: Tensor) -> Tensor:
        return (x - mean.view(1, 1, 1, 1)) / std.view(1, 1, 1, 1)

    x_train, y_train = normalise(train_split.images), train_split.labels
    x_test, y_test = normalise(test_split.images[: args.dig_test]), test_split.labels[: args.dig_test]
    num_classes = len(digits.CLASSES)

    def make_model() -> nn.Module:
        return make_cnn(args.dig_width, num_classes, in_channels=1)

    runs: list[Run] = []
    for seed in range(args.seed, args.seed + args.seeds):
        torch.manual_seed(seed)
        initial = make_model().state_dict()
        models: dict[str, nn.Module] = {}
        for method in IMAGE_METHODS:
            run, model, rel = train_image_method(make_model, initial, method, seed, x_train, y_train, x_test, y_test,
                                                 epochs=args.dig_epochs, batch_size=args.dig_batch, bar=bar)
            run.spread = relevance_spread(rel)
            runs.append(run)
            models[method] = model

        if seed == args.seed:  # the first training digit of each class
            picks = [int((y_train == cls).nonzero()[0]) for cls in range(num_classes)]
            images, labels = x_train[picks], y_train[picks]
            rel = relevance(models[RELDROP_IMAGE], images, labels)
            mask = relevance_dropout_mask(rel.sum(1), IMG_ALPHA, IMG_BETA,
                                          generator=torch.Generator().manual_seed(seed))
            fig = viz.plot_image_relevance(
                images, rel, mask, mean=mean, std=std, labels=labels, class_names=digits.CLASSES,
                max_samples=num_classes,
                title=f"Training digits: LRP of the '{RELDROP_IMAGE}' model, seed {seed},\n"
                      f"and the RelevanceDropout2d mask (alpha={IMG_ALPHA}, beta={IMG_BETA}) it gives")
            fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.4 / fig.get_figheight()))  # keep the title clear of 10 rows
            viz.save_png(fig, out / "relevance_digits.png")
    setup = (
        f"Real handwritten digits: `sklearn.datasets.load_digits()` (scikit-learn {sklearn.__version__}, shipped in "
        f"its wheel), {num_classes} classes, grey 8x8 upsampled bilinearly to 1x{args.dig_size}x{args.dig_size}. "
        f"One data-scarce split fixed in advance for every seed (permutation seed {digits.SPLIT_SEED}): "
        f"{args.dig_per_class} training images per class ({len(train_split)}) and {x_test.shape[0]} test images (the "
        f"rest{'' if x_test.shape[0] == len(test_split) else f', first {x_test.shape[0]} of {len(test_split)}'}). "
        f"The image section's CNN with one input channel, width {args.dig_width} "
        f"({sum(p.numel() for p in make_model().parameters())} parameters), {args.dig_epochs} epochs, batch "
        f"{args.dig_batch}, AdamW with a one-cycle schedule; the same four methods with the same settings as the "
        f"image section (RelevanceDropout2d: alpha={IMG_ALPHA}, beta={IMG_BETA}, p={IMG_P}), filling with 0 in "
        "normalised space (the training mean). No shortcut and no object mask here: the last column is how spread "
        "the relevance is, the share of the pixels that hold half of the absolute relevance (per test image, then "
        "averaged; higher: the relevance is spread over more pixels)."
    )
    return Experiment("digits", IMAGE_METHODS, runs, setup, [out / "relevance_digits.png"])


# -- report --------------------------------------------------------------------------------------------------------
def mean_sd(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± sd"`` (sample standard deviation over seeds; 0 for one seed)."""
    values = [scale * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def summarise(exp: Experiment) -> dict[str, dict[str, list[float]]]:
    """Per method: lists over seeds of the final test/train accuracy, s/epoch, AUC, object share, relevance spread and
    drop rate."""
    table: dict[str, dict[str, list[float]]] = {}
    for method in exp.methods:
        runs = [r for r in exp.runs if r.method == method]
        table[method] = {
            "test": [r.test_acc[-1] for r in runs],
            "train": [r.train_acc[-1] for r in runs],
            "seconds": [statistics.fmean(r.epoch_seconds) for r in runs],
            "auc": [area(r.curve) for r in runs],
            "object": [r.object_share for r in runs],
            "spread": [r.spread for r in runs],
            "dropped_start": [r.dropped[0] for r in runs if r.dropped],
            "dropped_end": [r.dropped[-1] for r in runs if r.dropped],
        }
    return table


# The last common column of the table: what it compares and how the paragraph names it, per modality.
RELEVANCE_COLUMN = {
    "images": ("object", "abs. relevance on object (%)", "the share of absolute relevance on the object"),
    "points": ("object", "abs. relevance on object (%)", "the share of absolute relevance on the object"),
    "digits": ("spread", "pixels holding half of abs. relevance (%)",
               "the share of pixels holding half of the absolute relevance"),
}


def format_table(exp: Experiment, summary: dict[str, dict[str, list[float]]]) -> str:
    """The Markdown table of one section: one row per method, ``mean ± sd`` over seeds in every cell."""
    key, header, _ = RELEVANCE_COLUMN[exp.modality]
    headers = ["method", "test acc (%)", "final train acc (%)", "s / epoch", "occlusion AUC (%)", header]
    if exp.modality == "points":
        headers.append("points dropped, untrained / trained model (%)")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for method, s in summary.items():
        cells = [method, mean_sd(s["test"]), mean_sd(s["train"]), mean_sd(s["seconds"], 1.0, 2), mean_sd(s["auc"]),
                 mean_sd(s[key])]
        if exp.modality == "points":
            cells.append(f"{mean_sd(s['dropped_start'])} / {mean_sd(s['dropped_end'])}" if s["dropped_start"]
                         else "0 / 0")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interpret(exp: Experiment, summary: dict[str, dict[str, list[float]]], reldrop: str) -> str:
    """One paragraph that states what the numbers show, derived from them (nothing is assumed about the outcome)."""

    def m(method: str, key: str) -> float:
        return 100 * statistics.fmean(summary[method][key])

    def sd(method: str, key: str) -> float:
        values = [100 * v for v in summary[method][key]]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def compare(key: str, what: str) -> str:
        diff = m(reldrop, key) - m(base, key)
        noise = max(sd(reldrop, key), sd(base, key))
        if len(summary[base][key]) < 2:
            verdict = "a single seed, so no spread to judge it against"
        elif abs(diff) > 2 * noise:
            verdict = "more than twice the larger seed spread"
        elif abs(diff) > noise:
            verdict = "larger than the seed spread, but less than twice it"
        else:
            verdict = "within the seed spread, so not distinguishable from noise here"
        if round(diff, 1) == 0:
            return f"{what} is the same to 0.1 points ({m(reldrop, key):.1f} vs {m(base, key):.1f})"
        direction = "higher" if diff > 0 else "lower"
        return f"{what} is {abs(diff):.1f} points {direction} ({m(reldrop, key):.1f} vs {m(base, key):.1f}; {verdict})"

    base = "no augmentation"
    best_test = max(summary, key=lambda k: m(k, "test"))
    best_auc = max(summary, key=lambda k: m(k, "auc"))
    key, _, what = RELEVANCE_COLUMN[exp.modality]
    best_rel = max(summary, key=lambda k: m(k, key))
    most = (f"the most relevance on the object {best_rel}'s ({m(best_rel, key):.1f}%)" if key == "object" else
            f"the most spread relevance {best_rel}'s ({m(best_rel, key):.1f}% of the pixels hold half of it)")
    slow = statistics.fmean(summary[reldrop]["seconds"]) / max(1e-9, statistics.fmean(summary[base]["seconds"]))
    n = len(summary[base]["test"])
    text = (
        f"Over {n} seed(s), {reldrop} compared with no augmentation: {compare('test', 'test accuracy')}; "
        f"{compare('auc', 'the occlusion AUC')}; {compare(key, what)}. "
        f"The best mean test accuracy is {best_test}'s ({m(best_test, 'test'):.1f}%), the highest occlusion AUC "
        f"{best_auc}'s ({m(best_auc, 'auc'):.1f}%) and {most}. An epoch with {reldrop} (its LRP pass included) "
        f"took {slow:.1f}x the time of one without augmentation. "
    )
    if n < 3:
        text += "With fewer than 3 seeds (a smoke run) these differences say nothing. "
    gap = m(base, "train") - m(base, "test")
    if exp.modality == "digits":
        text += (f"Without augmentation, final training accuracy minus test accuracy is {gap:.1f} points: with no "
                 "shortcut in these data, this is the plain generalisation gap of the small training split.")
    else:
        text += (f"Without augmentation, final training accuracy (shortcut present) minus test accuracy (shortcut "
                 f"absent) is {gap:.1f} points: the larger, the more the model leans on the shortcut.")
    return text


def plot_curves(experiments: list[Experiment], path: Path) -> None:
    """Training and test accuracy per epoch (mean over seeds, band: min to max), one panel per modality."""
    from matplotlib.figure import Figure

    from reldrop_transforms.viz import save_png

    fig = Figure(figsize=(6.0 * len(experiments), 4.2))
    axes = fig.subplots(1, len(experiments), squeeze=False)[0]
    for ax, exp in zip(axes, experiments):
        for i, method in enumerate(exp.methods):
            runs = [r for r in exp.runs if r.method == method]
            colour = f"C{i}"
            for key, style, label in (("train_acc", "--", "train"), ("test_acc", "-", "test")):
                curves = torch.tensor([getattr(r, key) for r in runs]) * 100
                epochs = range(1, curves.shape[1] + 1)
                ax.plot(epochs, curves.mean(0), style, color=colour, label=f"{method} ({label})", marker=".")
                if curves.shape[0] > 1:
                    ax.fill_between(epochs, curves.amin(0), curves.amax(0), color=colour, alpha=0.12)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{exp.modality}: train (dashed, augmented batches) and test (solid)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def plot_occlusion(experiments: list[Experiment], path: Path) -> None:
    """Test accuracy as the most relevant 0-50% of the inputs are removed (mean over seeds, band: min to max)."""
    from matplotlib.figure import Figure

    from reldrop_transforms.viz import save_png

    fig = Figure(figsize=(6.0 * len(experiments), 4.2))
    axes = fig.subplots(1, len(experiments), squeeze=False)[0]
    for ax, exp in zip(axes, experiments):
        unit = "points removed" if exp.modality == "points" else "pixels set to the mean"
        for i, method in enumerate(exp.methods):
            curves = torch.tensor([r.curve for r in exp.runs if r.method == method]) * 100
            x = [100 * f for f in FRACTIONS]
            ax.plot(x, curves.mean(0), color=f"C{i}", marker="o", markersize=3, label=method)
            if curves.shape[0] > 1:
                ax.fill_between(x, curves.amin(0), curves.amax(0), color=f"C{i}", alpha=0.12)
        ax.set_xlabel(f"most relevant {unit} (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{exp.modality}: occlusion in order of each model's LRP relevance", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> Path:
    """Run the demo; returns the output folder."""
    args = parse_args(argv)
    wall_start = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    total_epochs = args.seeds * (len(IMAGE_METHODS) * args.img_epochs * ("images" in args.modalities)
                                 + len(POINT_METHODS) * args.pc_epochs * ("points" in args.modalities)
                                 + len(IMAGE_METHODS) * args.dig_epochs * ("digits" in args.modalities))
    sections = {"images": run_images, "points": run_points, "digits": run_digits}
    experiments: list[Experiment] = []
    with tqdm(total=total_epochs, desc="training", unit="epoch", disable=args.no_progress) as bar:
        for modality in MODALITIES:
            if modality in args.modalities:
                start = time.perf_counter()
                experiments.append(sections[modality](args, out, bar))
                experiments[-1].seconds = time.perf_counter() - start

    # The synthetic sections share one figure of each kind (a panel per section); the digits have their own.
    synthetic_experiments = [exp for exp in experiments if exp.modality != "digits"]
    digits_experiments = [exp for exp in experiments if exp.modality == "digits"]
    curves_path, occlusion_path = out / "accuracy_curves.png", out / "occlusion.png"
    digits_curves_path, digits_occlusion_path = out / "accuracy_curves_digits.png", out / "occlusion_digits.png"
    if synthetic_experiments:
        plot_curves(synthetic_experiments, curves_path)
        plot_occlusion(synthetic_experiments, occlusion_path)
    if digits_experiments:
        plot_curves(digits_experiments, digits_curves_path)
        plot_occlusion(digits_experiments, digits_occlusion_path)

    elapsed = time.perf_counter() - wall_start
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# RelDrop demo report",
        "",
        f"Written by `examples/demo.py` ({args.preset} preset, seeds {args.seed}-{args.seed + args.seeds - 1}, "
        f"{args.threads} CPU thread(s), torch {torch.__version__}). Every number below was measured in this run.",
        "",
        "Columns: test accuracy after the last epoch (mean ± sample standard deviation over the seeds); final train "
        "accuracy on the batches as trained (augmented where the method augments; shortcut present in the synthetic "
        "sections); seconds per training epoch (including the LRP pass of the relevance methods; evaluation "
        "excluded); occlusion AUC: the test accuracy averaged over 0% to 50% of the most relevant inputs removed "
        "(trapezoids; higher: the model keeps more accuracy without what it relies on most); share of absolute LRP "
        "relevance (true class, summed over channels) that falls on the ground-truth object, on the test split; for "
        "the digits, which have no object mask, instead the share of the pixels that hold half of the absolute LRP "
        "relevance (per test image, then averaged; higher: more spread).",
        "",
    ]
    for exp in experiments:
        summary = summarise(exp)
        reldrop = RELDROP_POINTS if exp.modality == "points" else RELDROP_IMAGE
        lines += [f"## {exp.modality.capitalize()}", "", exp.setup, "", format_table(exp, summary), "",
                  interpret(exp, summary, reldrop), ""]
    lines += ["## Figures", ""]
    if synthetic_experiments:
        lines += [
            f"- `{curves_path.name}`: training and test accuracy per epoch (as the paper's Fig. 2).",
            f"- `{occlusion_path.name}`: test accuracy as the most relevant inputs are removed (as the paper's "
            "Fig. 4).",
        ]
    if "images" in args.modalities:
        lines += ["- `relevance_images.png`, `relevance_images_reldrop.png`: training images, LRP relevance of the "
                  "model trained without augmentation / with RelevanceDropout2d, and the RelDrop mask it gives."]
    if "points" in args.modalities:
        lines += ["- `relevance_points.png`: training clouds, LRP relevance of the RelevanceDropout3d model, and its "
                  "mask: dropped points red, kept points blue (as the paper's Fig. A.1)."]
    if digits_experiments:
        lines += [f"- `{digits_curves_path.name}`, `{digits_occlusion_path.name}`: the same two figures for the "
                  "digits.",
                  "- `relevance_digits.png`: one training digit per class, LRP relevance of the RelevanceDropout2d "
                  "model, and the RelDrop mask it gives."]
    per_section = ", ".join(f"{exp.modality} {exp.seconds:.1f} s" for exp in experiments)
    lines += ["", f"Total wall time of the run: {elapsed:.1f} s ({per_section}; 1-minute load average "
              f"{load_start:.2f} at the start, {load_end:.2f} at the end).", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")

    print("\n".join(lines))
    print(f"Results written to {out.resolve()}")
    return out


if __name__ == "__main__":
    main()
