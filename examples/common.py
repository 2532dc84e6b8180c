"""Shared pieces of the training scripts (``train_cifar.py``, ``train_imagefolder.py``, ``train_modelnet.py``,
``train_shapenet.py``): command-line options, seeding, checkpoints, and the train/evaluate loops.

Every script trains with RelDrop applied to whole batches in the main process: the training DataLoader (workers
allowed) is wrapped in :class:`reldrop_transforms.RelevanceLoader`, which moves each batch to the model's device and
applies the transform there. AMP (``torch.autocast`` in float16 with a ``GradScaler``) is used on CUDA only; the
attribution itself runs outside autocast, in float32. A script's ``main`` is :func:`run` (or :func:`run_point_cloud`)
given its own pieces: parser, datasets, model, RelDrop transform, optimizer and default weight decay.

Not part of the package: the scripts import it from their own folder.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from reldrop_transforms import RelevanceDropout2d, RelevanceLoader
from reldrop_transforms.loaders import move_to_device

__all__ = [
    "DownloadOnRequest",
    "POINT_MODELS",
    "add_common_arguments",
    "add_point_model_argument",
    "add_reldrop_arguments",
    "build_point_model",
    "check_resume_arguments",
    "evaluate",
    "fit",
    "image_reldrop",
    "layout_at",
    "make_loaders",
    "make_parser",
    "missing_files_error",
    "offline_dataset",
    "parse_fill",
    "point_cloud_reldrop",
    "resolve_device",
    "run",
    "run_point_cloud",
    "seed_everything",
    "split_graph",
    "split_pair",
    "train_one_epoch",
    "load_checkpoint",
    "save_checkpoint",
    "wrap_with_reldrop",
]

Split = Callable[[Any], tuple[Any, Tensor]]
"""``split(batch) -> (model_input, labels)``: how a script's batches are read."""


def split_pair(batch: Sequence) -> tuple[Tensor, Tensor]:
    """Batches of ``(images, labels)`` (torchvision datasets)."""
    return batch[0], batch[1]


def split_graph(batch: Any) -> tuple[Any, Tensor]:
    """PyG batches: the whole ``Batch`` goes to the model, ``batch.y`` holds the labels."""
    return batch, batch.y


# -- command line --------------------------------------------------------------------------------------------------
def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of a script's docstring ``doc``, showing defaults in ``--help``."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    download: bool = True,
) -> None:
    """The options every script takes: data, schedule, loader, device, checkpoint and smoke-test limits."""
    parser.add_argument("--data-root", type=Path, required=True, help="dataset folder (see the script's docstring)")
    if download:
        parser.add_argument("--download", action="store_true",
                            help="download the dataset if its files are missing (never done otherwise)")
    parser.add_argument("--epochs", type=int, default=epochs, help="total number of epochs (also when resuming)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="samples per batch")
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate (cosine schedule)")
    parser.add_argument("--weight-decay", type=float, default=None, help="weight decay (None: the script's default)")
    parser.add_argument("--num-workers", type=int, default=2,
                        help="DataLoader workers; RelDrop still attributes in the main process")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda if available, else cpu")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision (float16 autocast + GradScaler); only ever used on CUDA")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="file written after every epoch: model, optimizer, scheduler, scaler, epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="at most this many batches per epoch and per evaluation (smoke tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of Python, NumPy, torch and the shuffling")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="tqdm progress bars")


def add_reldrop_arguments(parser: argparse.ArgumentParser, *, alpha: float, beta: float, p: float,
                          fill: bool = False, cuda_graphs: bool = False) -> None:
    """``--reldrop/--no-reldrop`` and the transform's main options; ``--fill`` for the point-cloud scripts,
    ``--cuda-graphs`` (outside the RelDrop group) for the image scripts."""
    group = parser.add_argument_group("RelDrop")
    group.add_argument("--reldrop", action=argparse.BooleanOptionalAction, default=True,
                       help="train with relevance-driven input dropout")
    group.add_argument("--alpha", type=float, default=alpha, help="weight of the random term")
    group.add_argument("--beta", type=float, default=beta, help="drop threshold offset")
    group.add_argument("--p", type=float, default=p, help="probability that a sample is masked at all")
    group.add_argument("--epsilon", type=float, default=1e-3, help="stabiliser of the LRP Epsilon rule")
    group.add_argument("--backend", choices=("auto", "fast", "zennit"), default="auto",
                       help="attribution backend (default: auto, the fast LRP engine for the paper's composite)")
    if fill:
        group.add_argument("--fill", type=parse_fill, default="zero",
                           help="dropped points: zero (the paper), first (copy the cloud's first kept point), "
                                "remove (PyG batches shrink), or a number")
    if cuda_graphs:
        parser.add_argument("--cuda-graphs", action="store_true",
                            help="capture RelDrop's attribution in CUDA graphs (CUDA and the fast engine only)")


POINT_MODELS = ("pointnet", "pointnet2", "dgcnn", "tiny")
"""The point-cloud models (``--model``); the fast LRP engine attributes every one of them (``--backend auto``)."""


def add_point_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model`` of the point-cloud scripts (see :data:`POINT_MODELS`)."""
    parser.add_argument("--model", choices=POINT_MODELS, default="pointnet",
                        help="pointnet, pointnet2, dgcnn (all attributed by the fast LRP engine), tiny (for tests)")


def check_resume_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot check by itself."""
    if args.resume and args.checkpoint is None:
        parser.error("--resume needs --checkpoint PATH (the file to continue from).")
    for name in ("epochs", "batch_size", "num_workers", "num_points", "image_size"):
        if not hasattr(args, name):
            continue
        minimum = 0 if name == "num_workers" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} should be >= {minimum}, but got {getattr(args, name)}.")
    if args.limit_batches is not None and args.limit_batches < 1:
        parser.error(f"--limit-batches should be >= 1, but got {args.limit_batches}.")


def parse_fill(text: str) -> str | float:
    """``--fill``: ``zero``, ``first``, ``remove`` or a number."""
    if text in ("zero", "first", "remove"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--fill should be 'zero', 'first', 'remove' or a number, but got {text!r}."
        ) from None


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for, but CUDA is not available here; use --device cpu.")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a generator for the DataLoader's shuffling."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - torchvision brings numpy
        pass
    return torch.Generator().manual_seed(seed)


# -- data --------------------------------------------------------------------------------------------------------
def missing_files_error(dataset: str, root: Path, missing: Sequence[str | os.PathLike], layout: str,
                        *, download_hint: bool = True) -> FileNotFoundError:
    """A ``FileNotFoundError`` that names what is missing and the layout the script expects."""
    shown = [str(path) for path in missing[:5]]
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    hint = "Nothing is downloaded unless asked. Pass --download to fetch it, or point --data-root at an existing " \
        "copy." if download_hint else "Point --data-root at it."
    return FileNotFoundError(
        f"{dataset} files were not found under {root}: missing {', '.join(shown)}{more}. "
        f"Expected layout:\n{layout.rstrip()}\n{hint}"
    )


def layout_at(layout: str, root: Path) -> str:
    """A script's ``LAYOUT`` with ``DATA_ROOT`` replaced by the actual ``--data-root``."""
    return layout.replace("DATA_ROOT", str(root))


class DownloadOnRequest:
    """Mixin for PyG datasets: ``download()`` runs only when the dataset was built with ``download=True``.

    PyG calls ``download()`` whenever one of ``raw_paths`` is missing; here that raises a ``FileNotFoundError``
    naming the missing paths and the expected layout (``LAYOUT``) instead, unless downloading was asked for.

    Example:
        >>> class OfflineModelNet(DownloadOnRequest, torch_geometric.datasets.ModelNet):
        ...     LAYOUT = "raw/<class>/{train,test}/<class>_<id>.off"
        >>> OfflineModelNet(root, name="10", download=False)
    """

    LAYOUT = ""
    DATASET = "dataset"

    def __init__(self, root, *args, download: bool = False, **kwargs) -> None:
        self.allow_download = bool(download)  # read by download(), which PyG calls from its __init__
        existing = Path(os.path.abspath(os.path.expanduser(str(root))))
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        self.existing_ancestor = existing  # (PyG makes root and its parents before calling download())
        super().__init__(root, *args, **kwargs)

    def download(self) -> None:
        if not self.allow_download:
            missing = [path for path in self.raw_paths if not os.path.exists(path)]
            # the empty folders PyG made just before calling this: the raw folder (left, it reads as a class folder
            # of the dataset: --data-root pointed at DATA/raw left DATA/raw/raw behind), then the root and its
            # parents that did not exist before; what is not empty stays
            folder = Path(os.path.abspath(self.raw_dir))
            while folder != self.existing_ancestor and self.existing_ancestor in folder.parents:
                try:
                    os.rmdir(folder)
                except OSError:  # (not empty, or not there: left as it is)
                    break
                folder = folder.parent
            raise missing_files_error(self.DATASET, Path(self.root), missing, self.LAYOUT)
        super().download()


def offline_dataset(base: type, dataset: str, layout: str, module: str) -> type:
    """``class Offline<base>(DownloadOnRequest, base)`` with ``DATASET = dataset`` and ``LAYOUT = layout``: a PyG
    dataset that downloads only when built with ``download=True`` (see :class:`DownloadOnRequest`). ``module`` (the
    calling script's ``__name__``) is where the class is defined, so that it pickles by reference."""
    return type(f"Offline{base.__name__}", (DownloadOnRequest, base), {
        "__module__": module,
        "__doc__": f"``{base.__module__}.{base.__name__}`` that downloads only with ``download=True``.",
        "DATASET": dataset,
        "LAYOUT": layout,
    })


# -- checkpoints -------------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, *, model: nn.Module, optimizer, scheduler, scaler, epoch: int,
                    args: argparse.Namespace, generator: torch.Generator | None = None) -> None:
    """Write the training state after ``epoch`` (1-based: the number of finished epochs), atomically; with
    ``generator`` (the loader's shuffling), its state too, so that a resumed run does not replay epoch 1's order."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        **({"loader_rng": generator.get_state()} if generator is not None else {}),
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# The options that decide the model's shape or what its labels mean: a checkpoint written with others is refused.
IDENTITY_ARGUMENTS = ("model", "dataset", "name", "categories", "normals")


def load_checkpoint(path: Path, *, model: nn.Module, optimizer, scheduler, scaler, device: torch.device,
                    args: argparse.Namespace | None = None, generator: torch.Generator | None = None) -> int:
    """Restore a state written by :func:`save_checkpoint`; returns the number of finished epochs. With ``args``, a
    checkpoint written with another value of an option in :data:`IDENTITY_ARGUMENTS` (``--model``, ``--dataset``,
    ``--name``, ``--categories``, ``--normals``) is refused with a message that says so; so is one whose model does
    not fit this one (another number of classes: an ImageFolder tree with other class folders)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume was given, but the checkpoint {path} does not exist.")
    state = torch.load(path, map_location=device, weights_only=True)
    saved_args = state.get("args") or {}
    for key in IDENTITY_ARGUMENTS if args is not None else ():
        if key not in saved_args or not hasattr(args, key):
            continue
        saved, current = saved_args[key], getattr(args, key)
        if saved != current:
            option = f"--{key.replace('_', '-')}"
            shown = [" ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
                     for value in (saved, current)]
            raise ValueError(f"--resume: the checkpoint {path} was written for {option} {shown[0]}, not {option} "
                             f"{shown[1]}.")
    own = model.state_dict()
    misfits = [f"{key} {tuple(value.shape)} there, {tuple(own[key].shape)} here" for key, value in state["model"].items()
               if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape]
    if misfits:
        raise ValueError(f"--resume: the model in the checkpoint {path} does not fit this one ({'; '.join(misfits[:3])}"
                         f"): it was trained on another dataset or another number of classes.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].cpu())
    if generator is not None and "loader_rng" in state:
        generator.set_state(state["loader_rng"].cpu())
    return int(state["epoch"])


# -- loops -------------------------------------------------------------------------------------------------------
def _limited(loader: Iterable, limit: int | None) -> tuple[Iterable, int | None]:
    total = len(loader) if hasattr(loader, "__len__") else None
    if limit is None:
        return loader, total
    return itertools.islice(loader, limit), limit if total is None else min(total, limit)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, *, split: Split, device: torch.device, amp: bool,
                    limit: int | None = None, desc: str = "train", progress: bool = True) -> tuple[float, float]:
    """One pass over ``loader`` (RelDrop already applied by a ``RelevanceLoader``); ``(mean loss, accuracy)``."""
    model.train()
    iterator, total = _limited(loader, limit)
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(iterator, total=total, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    for batch in bar:
        inputs, labels = split(move_to_device(batch, device))
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        size = labels.shape[0]
        loss_sum += float(loss.detach()) * size
        correct += int((logits.detach().argmax(1) == labels).sum())
        seen += size
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    if seen == 0:
        raise ValueError(f"{desc}: the training loader gave no batch; the training set is smaller than one batch "
                         "(the last incomplete batch is dropped). Lower --batch-size.")
    return loss_sum / seen, correct / seen


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, split: Split, device: torch.device, amp: bool,
             limit: int | None = None, desc: str = "test", progress: bool = True) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode)."""
    model.eval()
    iterator, total = _limited(loader, limit)
    correct, seen = 0, 0
    for batch in tqdm(iterator, total=total, desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        inputs, labels = split(move_to_device(batch, device))
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(inputs)
        correct += int((logits.argmax(1) == labels).sum())
        seen += labels.shape[0]
    if seen == 0:
        raise ValueError(f"{desc}: the evaluation set is empty.")
    return correct / seen


def fit(args: argparse.Namespace, *, model: nn.Module, train_loader: Iterable, test_loader: Iterable,
        optimizer: torch.optim.Optimizer, split: Split, device: torch.device,
        generator: torch.Generator | None = None) -> list[dict[str, float]]:
    """Train for ``args.epochs`` epochs (resuming from ``args.checkpoint`` with ``args.resume``), evaluate and
    checkpoint after each; returns one ``{"epoch", "train_loss", "train_acc", "test_acc"}`` per epoch run.
    ``generator``: the training loader's shuffling, checkpointed and restored with the rest.

    The learning rate follows a cosine schedule, ``lr * (1 + cos(pi * epoch / epochs)) / 2`` in epoch ``epoch``
    (0-based). It is computed in closed form from the current ``--epochs``, so a resumed run can be extended; the
    base learning rate and the position come from the checkpoint.
    """
    amp = bool(args.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def cosine(epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, args.epochs) / args.epochs))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    start = 0
    if args.resume:
        start = load_checkpoint(args.checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                                scaler=scaler, device=device, args=args, generator=generator)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * cosine(start)  # the saved lr followed the saved run's length
        print(f"resumed from {args.checkpoint} after epoch {start}")
        if start >= args.epochs:
            print(f"nothing to do: {start} of --epochs {args.epochs} already finished")
    history = []
    for epoch in range(start, args.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        tag = f"epoch {epoch + 1}/{args.epochs}"
        train_loss, train_acc = train_one_epoch(
            model, train_loader, optimizer, scaler, split=split, device=device, amp=amp,
            limit=args.limit_batches, desc=f"{tag} train", progress=args.progress,
        )
        scheduler.step()
        test_acc = evaluate(model, test_loader, split=split, device=device, amp=amp, limit=args.limit_batches,
                            desc=f"{tag} test", progress=args.progress)
        print(f"{tag}  train loss {train_loss:.4f}  train acc {train_acc:.4f}  test acc {test_acc:.4f}", flush=True)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "test_acc": test_acc})
        if args.checkpoint is not None:
            save_checkpoint(args.checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            epoch=epoch + 1, args=args, generator=generator)
    return history


# -- a script's main ----------------------------------------------------------------------------------------------
def make_loaders(args: argparse.Namespace, train_set, test_set, generator: torch.Generator, device: torch.device,
                 loader_cls: type = DataLoader) -> tuple[Iterable, Iterable]:
    """Training loader (shuffled with ``generator``, last incomplete batch dropped, persistent workers) and
    evaluation loader, both with ``--batch-size`` and ``--num-workers``; memory pinned on CUDA. ``loader_cls``:
    torch's ``DataLoader``, or PyG's for graph data."""
    pin = device.type == "cuda"
    train_loader = loader_cls(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              num_workers=args.num_workers, pin_memory=pin, generator=generator,
                              persistent_workers=args.num_workers > 0)
    test_loader = loader_cls(test_set, batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=pin)
    return train_loader, test_loader


def wrap_with_reldrop(args: argparse.Namespace, loader: Iterable, make_transform: Callable[[], Callable]) -> Iterable:
    """With ``--reldrop``: ``loader`` wrapped in a ``RelevanceLoader`` applying ``make_transform()`` (built only
    then, and printed); without it, ``loader`` itself."""
    if not args.reldrop:
        return loader
    reldrop = make_transform()
    loader = RelevanceLoader(loader, reldrop)
    print(f"training with {reldrop}")
    return loader


def image_reldrop(args: argparse.Namespace, model: nn.Module) -> RelevanceDropout2d:
    """``RelevanceDropout2d`` from the image scripts' options."""
    return RelevanceDropout2d(model, alpha=args.alpha, beta=args.beta, p=args.p, epsilon=args.epsilon,
                              backend=args.backend, cuda_graphs=args.cuda_graphs)


def point_cloud_reldrop(args: argparse.Namespace, model: nn.Module):
    """``RelevanceDropout3d`` from the point-cloud scripts' options."""
    from reldrop_transforms.transforms import RelevanceDropout3d

    return RelevanceDropout3d(model, alpha=args.alpha, beta=args.beta, p=args.p, fill=args.fill,
                              epsilon=args.epsilon, backend=args.backend)


def build_point_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """A model of ``reldrop_transforms.models`` (needs PyG) by its ``--model`` name; ``tiny`` is a small PointNet."""
    from reldrop_transforms.models import DGCNN, PointNet, PointNet2

    if name == "pointnet":
        return PointNet(in_channels, num_classes)
    if name == "pointnet2":
        return PointNet2(in_channels, num_classes)
    if name == "dgcnn":
        return DGCNN(in_channels, num_classes)
    return PointNet(in_channels, num_classes, hidden=(16, 32), head=(16,), dropout=0.0)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *,
        build_datasets: Callable[[argparse.Namespace], tuple[Any, Any, int]],
        build_model: Callable[[argparse.Namespace, int], nn.Module],
        make_transform: Callable[[argparse.Namespace, nn.Module], Callable],
        optimizer: Callable[..., torch.optim.Optimizer], weight_decay: float, split: Split,
        loader_cls: type = DataLoader) -> list[dict[str, float]]:
    """A training script's ``main``: parse ``argv`` (and check it), pick the device, seed, build the datasets
    (``build_datasets(args) -> (train, test, num_classes)``) and the model (``build_model(args, num_classes)``),
    the loaders (:func:`make_loaders`), RelDrop on the training loader (:func:`wrap_with_reldrop` with
    ``make_transform(args, model)``) and ``optimizer(params, lr=--lr, weight_decay=--weight-decay or
    weight_decay)``, then :func:`fit`. Returns the per-epoch history."""
    args = parser.parse_args(argv)
    check_resume_arguments(parser, args)
    device = resolve_device(args.device)
    generator = seed_everything(args.seed)
    train_set, test_set, num_classes = build_datasets(args)

    model = build_model(args, num_classes).to(device)
    train_loader, test_loader = make_loaders(args, train_set, test_set, generator, device, loader_cls)
    train_loader = wrap_with_reldrop(args, train_loader, lambda: make_transform(args, model))

    decay = weight_decay if args.weight_decay is None else args.weight_decay
    opt = optimizer(model.parameters(), lr=args.lr, weight_decay=decay)
    return fit(args, model=model, train_loader=train_loader, test_loader=test_loader, optimizer=opt, split=split,
               device=device, generator=generator)


def run_point_cloud(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *,
                    build_datasets: Callable[[argparse.Namespace], tuple[Any, Any, int]],
                    in_channels: Callable[[argparse.Namespace], int]) -> list[dict[str, float]]:
    """:func:`run` with what the point-cloud scripts share: PyG's ``DataLoader``, :func:`build_point_model` with
    ``in_channels(args)`` input channels, :func:`point_cloud_reldrop`, Adam with weight decay 1e-4 by default,
    batches read by :func:`split_graph`."""
    from torch_geometric.loader import DataLoader as GraphLoader

    return run(parser, argv, build_datasets=build_datasets,
               build_model=lambda args, num_classes: build_point_model(args.model, in_channels(args), num_classes),
               make_transform=point_cloud_reldrop, optimizer=torch.optim.Adam, weight_decay=1e-4,
               split=split_graph, loader_cls=GraphLoader)
