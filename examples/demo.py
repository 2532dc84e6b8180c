"""RelDrop demo: train a small CNN with and without RelevanceDropout2d on a dataset with a planted shortcut.

The data (``examples/synthetic.py``, generated in code) are shapes on textured backgrounds. In the training
split a coloured marker in the top-left corner gives the class away in most images; in the test split the
marker colour is random. A model that reads the marker instead of the shape loses accuracy on the test split.
RelDrop occludes the pixels the *current* model finds most relevant, so a model that leans on the marker
keeps losing it during training and has to learn the shapes too.

The script trains the same CNN (same initialisation, same batch order) twice on the CPU: once without
augmentation and once with ``RelevanceDropout2d`` applied to every batch through ``RelevanceLoader``. It then
prints and saves a results table (``results.md``) and a figure (``relevance.png``) with inputs, LRP relevance
maps of both models, a RelDrop mask and the masked input. Every number in them is measured in the run.

Run it with ``make demo`` or::

    .venv/bin/python examples/demo.py            # the full demo (a few minutes on 2 CPU cores)
    .venv/bin/python examples/demo.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # synthetic.py sits next to this file

import synthetic  # noqa: E402

from reldrop_transforms import RelevanceDropout2d, RelevanceLoader  # noqa: E402
from reldrop_transforms.attribution import relevance  # noqa: E402
from reldrop_transforms.functional import fill_dropped, relevance_dropout_mask  # noqa: E402

# Defaults of the full run, sized to finish in well under 4 minutes on 2 CPU cores (both trainings included).
DEFAULTS = {"epochs": 8, "train_size": 6000, "test_size": 2000, "width": 16, "batch_size": 128}
# The --quick smoke run.
QUICK = {"epochs": 1, "train_size": 256, "test_size": 256, "width": 8, "batch_size": 64}

# The paper's image settings (pixel variant).
ALPHA, BETA, P = 0.3, 0.5, 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The parsed options, with sizes filled in from ``DEFAULTS`` or ``QUICK``.
    """
    parser = argparse.ArgumentParser(
        description=(
            "Train a small CNN with and without RelDrop (RelevanceDropout2d) on a synthetic shape dataset whose "
            "training split carries a class-revealing marker, and compare test accuracy, train accuracy and "
            "time per epoch. Writes results.md and relevance.png into --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (created if missing)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs per method (default {DEFAULTS['epochs']}, --quick: {QUICK['epochs']})")
    parser.add_argument("--train-size", type=int, default=None,
                        help=f"training images (default {DEFAULTS['train_size']}, --quick: {QUICK['train_size']})")
    parser.add_argument("--test-size", type=int, default=None,
                        help=f"test images (default {DEFAULTS['test_size']}, --quick: {QUICK['test_size']})")
    parser.add_argument("--width", type=int, default=None,
                        help=f"channels of the first conv layer (default {DEFAULTS['width']}, --quick: {QUICK['width']})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"batch size (default {DEFAULTS['batch_size']}, --quick: {QUICK['batch_size']})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the initialisation and the batch order")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: few images, 1 epoch, narrow model")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULTS
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "train_size", "test_size", "width", "batch_size", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} should be >= 1, but got {getattr(args, key)}.")
    return args


def make_model(width: int, num_classes: int) -> nn.Sequential:
    """A small CNN: four 3x3 conv-BatchNorm-ReLU blocks (two with stride 2), global average pool, linear.

    A plain ``nn.Sequential`` of ``nn.Module`` leaves, so that LRP (zennit) sees every layer and can merge each
    BatchNorm into the convolution before it.

    Args:
        width: Channels of the first block (the others have 2x and 4x).
        num_classes: Number of outputs.
    """

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, width, 1),
        *block(width, 2 * width, 2),
        *block(2 * width, 2 * width, 1),
        *block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in eval mode, as a fraction in [0, 1]; the model's train/eval flag is restored."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, images.shape[0])


@dataclass
class RunResult:
    """What one training run produced."""

    name: str
    model: nn.Module
    seconds_per_epoch: float
    final_loss: float


def train(name: str, model: nn.Module, train_set: synthetic.ShapesDataset, args: argparse.Namespace,
          use_reldrop: bool) -> RunResult:
    """Train ``model`` in place with AdamW and a cosine schedule; optionally with RelDrop on every batch.

    Both methods see the same batches in the same order (the shuffle generator is seeded with ``args.seed``).

    Args:
        name: Label of the run (progress bar and table).
        model: The model, already initialised.
        train_set: The normalised training data.
        args: Command-line options.
        use_reldrop: Wrap the loader with ``RelevanceLoader(loader, RelevanceDropout2d(model, ...))``.
    """
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(args.seed))
    if use_reldrop:
        transform = RelevanceDropout2d(model, alpha=ALPHA, beta=BETA, p=P, value=0.0,
                                       generator=torch.Generator().manual_seed(args.seed + 1))
        loader = RelevanceLoader(loader, transform)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=args.epochs * len(loader),
                                                    pct_start=0.15)
    criterion = nn.CrossEntropyLoss()
    model.train()
    epoch_seconds: list[float] = []
    loss_value = float("nan")
    epochs = tqdm(range(args.epochs), desc=name, unit="epoch", disable=args.no_progress, leave=True)
    for _ in epochs:
        start = time.perf_counter()
        running, seen = 0.0, 0
        for images, labels in tqdm(loader, desc="  batches", unit="batch", leave=False, disable=args.no_progress):
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * labels.shape[0]
            seen += labels.shape[0]
        epoch_seconds.append(time.perf_counter() - start)
        loss_value = running / max(1, seen)
        epochs.set_postfix(loss=f"{loss_value:.3f}", s_per_epoch=f"{epoch_seconds[-1]:.1f}")
    return RunResult(name, model, sum(epoch_seconds) / len(epoch_seconds), loss_value)


def relevance_shares(model: nn.Module, images: Tensor, labels: Tensor, object_masks: Tensor) -> tuple[float, float]:
    """Mean share of positive (channel-summed) LRP relevance on the marker and on the object.

    Args:
        model: The classifier.
        images: Normalised images that carry a marker.
        labels: Their true labels (the attributed class).
        object_masks: Ground-truth object masks ``(N, H, W)``.

    Returns:
        ``(marker share, object share)``, each a fraction in [0, 1] averaged over the images.
    """
    rel = relevance(model, images, labels).sum(1).clamp(min=0)  # (N, H, W)
    total = rel.sum((1, 2)).clamp(min=1e-12)
    marker = synthetic.marker_region().to(rel.device)
    marker_share = (rel * marker).sum((1, 2)) / total
    object_share = (rel * object_masks).sum((1, 2)) / total
    return float(marker_share.mean()), float(object_share.mean())


def save_figure(path: Path, baseline: nn.Module, reldrop: nn.Module, images: Tensor, labels: Tensor,
                mean: Tensor, std: Tensor, seed: int) -> None:
    """Save a grid: input, relevance of each model, the RelDrop mask (from the RelDrop model) and the masked input.

    Args:
        path: PNG file to write.
        baseline: The model trained without augmentation.
        reldrop: The model trained with RelDrop.
        images: A few normalised images ``(N, 3, H, W)``.
        labels: Their labels (the attributed class).
        mean: Channel means used for normalisation (to display the images).
        std: Channel standard deviations used for normalisation.
        seed: Seed of the mask noise.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel_base = relevance(baseline, images, labels).sum(1)
    rel_drop = relevance(reldrop, images, labels).sum(1)
    mask = relevance_dropout_mask(rel_drop, ALPHA, BETA, generator=torch.Generator().manual_seed(seed))
    masked = fill_dropped(images, mask, 0.0)

    def show(x: Tensor):
        return (x * std.view(3, 1, 1) + mean.view(3, 1, 1)).clamp(0, 1).permute(1, 2, 0).cpu().numpy()

    columns = ["input", "LRP relevance\nbaseline model", "LRP relevance\nRelDrop model",
               f"RelDrop mask (alpha={ALPHA}, beta={BETA})\nfrom RelDrop model", "masked input\n(fill = dataset mean)"]
    n = images.shape[0]
    fig, axes = plt.subplots(n, len(columns), figsize=(2.3 * len(columns), 2.3 * n), squeeze=False)
    for i in range(n):
        panels = [
            ("image", show(images[i])),
            ("relevance", rel_base[i]),
            ("relevance", rel_drop[i]),
            ("mask", mask[i]),
            ("image", show(masked[i])),
        ]
        for j, (kind, data) in enumerate(panels):
            ax = axes[i, j]
            if kind == "relevance":
                limit = float(data.abs().max()) or 1.0
                im = ax.imshow(data.cpu().numpy(), cmap="bwr", vmin=-limit, vmax=limit)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
            elif kind == "mask":
                ax.imshow(data.cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
                ax.set_xlabel(f"{float(data.float().mean()):.0%} dropped", fontsize=7)
            else:
                ax.imshow(data)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
        axes[i, 0].set_ylabel(synthetic.CLASSES[int(labels[i])], fontsize=9)
    fig.suptitle("Training images (with the class-revealing marker, top left): where each model looks", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(rows: list[dict[str, str]]) -> str:
    """A Markdown table from rows of equal keys."""
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row[h] for h in headers) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    """Run the demo.

    Args:
        argv: Command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The output folder.
    """
    args = parse_args(argv)
    wall_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # Data: generated in code; the test split gets its own seed. Normalised with the training statistics,
    # so that RelDrop's fill value 0.0 is the dataset mean.
    train_split = synthetic.make_split(args.train_size, seed=args.seed, train=True)
    test_split = synthetic.make_split(args.test_size, seed=args.seed + 10_000, train=False)
    clean_split = synthetic.make_split(args.test_size, seed=args.seed + 10_000, train=False, shortcut_p=0.0)
    mean, std = synthetic.channel_stats(train_split.images)

    def normalise(x: Tensor) -> Tensor:
        return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    x_train, x_test, x_clean = normalise(train_split.images), normalise(test_split.images), normalise(clean_split.images)
    train_set = synthetic.ShapesDataset(x_train, train_split.labels)
    num_classes = len(synthetic.CLASSES)

    # One initialisation for both runs.
    torch.manual_seed(args.seed)
    initial = make_model(args.width, num_classes)
    runs = []
    for name, use_reldrop in (("baseline (no augmentation)", False), (f"RelDrop (alpha={ALPHA}, beta={BETA}, p={P})", True)):
        model = copy.deepcopy(initial)
        runs.append(train(name, model, train_set, args, use_reldrop))

    # Evaluation. Relevance shares on training-distribution images that carry the (class-revealing) marker.
    with_marker = train_split.marker_present.nonzero().flatten()[:256]
    rows = []
    for run in runs:
        marker_share, object_share = relevance_shares(run.model, x_train[with_marker], train_split.labels[with_marker],
                                                      train_split.masks[with_marker])
        rows.append({
            "method": run.name,
            "test acc, random marker (%)": f"{100 * accuracy(run.model, x_test, test_split.labels):.1f}",
            "test acc, no marker (%)": f"{100 * accuracy(run.model, x_clean, clean_split.labels):.1f}",
            "train acc (%)": f"{100 * accuracy(run.model, x_train, train_split.labels):.1f}",
            "s / epoch": f"{run.seconds_per_epoch:.2f}",
            "relevance on marker (%)": f"{100 * marker_share:.1f}",
            "relevance on object (%)": f"{100 * object_share:.1f}",
        })
    table = format_table(rows)

    # Figure: a few training images with the marker, one per class where possible.
    picks = []
    for cls in range(num_classes):
        idx = (train_split.labels[with_marker] == cls).nonzero().flatten()
        if idx.numel():
            picks.append(int(with_marker[idx[0]]))
    picks = picks[:5]
    figure_path = out / "relevance.png"
    save_figure(figure_path, runs[0].model, runs[1].model, x_train[picks], train_split.labels[picks], mean, std,
                args.seed)

    elapsed = time.perf_counter() - wall_start
    chance = 100 / num_classes
    notes = [
        "# RelDrop demo results",
        "",
        f"Synthetic shapes ({num_classes} classes, 3x32x32): {args.train_size} training images, "
        f"{args.test_size} test images, {args.epochs} epoch(s), batch {args.batch_size}, CNN width {args.width}, "
        f"seed {args.seed}, {args.threads} CPU thread(s). Chance is {chance:.1f}%.",
        f"The training split has a class-revealing marker in {100 * float(train_split.marker_present.float().mean()):.0f}% "
        "of its images; in the test split the marker has a random class colour (\"random marker\") or is absent "
        "(\"no marker\"). Train accuracy is measured in eval mode on the unaugmented training images.",
        "Relevance shares: mean share of positive channel-summed LRP relevance (true class) on the marker patch and "
        f"on the ground-truth object, over {with_marker.numel()} training images with a marker.",
        "s / epoch includes RelDrop's attribution pass (LRP, zennit backend) on the selected samples of every batch.",
        "",
        table,
        "",
        f"Total wall time of the run: {elapsed:.1f} s.",
        "",
    ]
    (out / "results.md").write_text("\n".join(notes))

    print()
    print(table)
    print(f"\nTotal wall time: {elapsed:.1f} s")
    print(f"Figure: {figure_path}")
    print(f"Results written to {out.resolve()}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
