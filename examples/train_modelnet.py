"""Train a point-cloud classifier on ModelNet10/40 with RelDrop (``RelevanceDropout3d``) on PyG batches.

Data: PyG's ``datasets.ModelNet`` under ``--data-root``, i.e. the unzipped ``ModelNet10.zip`` / ``ModelNet40.zip``
whose top folder (``ModelNet10/``) is renamed to ``raw/``::

    DATA_ROOT/raw/<class>/train/<class>_<id>.off
    DATA_ROOT/raw/<class>/test/<class>_<id>.off

Labels are the class folders in sorted order. PyG considers the raw files present when the folders of the ten
ModelNet10 classes exist (also for ModelNet40) and otherwise calls its ``download()``; here that raises a
``FileNotFoundError`` naming what is missing unless ``--download`` is given. The first run converts the meshes to
``DATA_ROOT/processed/{training,test}.pt`` (scaled into the unit sphere by ``NormalizeScale``); use a separate
``--data-root`` for ModelNet10 and ModelNet40, as PyG's processed file names do not say which one they hold.

Each access samples ``--num-points`` points on the mesh faces (``SamplePoints``, area-weighted), in the DataLoader
workers. RelDrop runs on the collated ``Batch`` in the main process through ``RelevanceLoader``; ``--fill remove``
really removes the dropped points (variable-size clouds), ``zero`` (the paper) and ``first`` keep ``N``.

Models (``reldrop_transforms.models``, plain PyTorch, no pyg-lib/torch-cluster): ``pointnet``, ``pointnet2`` and
``dgcnn``, all attributed by the fast exact LRP engine (``--backend auto``), and ``tiny`` (a small PointNet for tests).

Example:
    python examples/train_modelnet.py --data-root ~/data/ModelNet40 --name 40 --model pointnet2 \\
        --fill first --epochs 200 --checkpoint runs/mn40.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch_geometric import datasets, transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_arguments, add_point_model_argument, add_reldrop_arguments  # noqa: E402
from common import layout_at, make_parser, offline_dataset, run_point_cloud  # noqa: E402

LAYOUT = """  DATA_ROOT/raw/<class>/train/<class>_<id>.off
  DATA_ROOT/raw/<class>/test/<class>_<id>.off
  (the unzipped ModelNet10.zip / ModelNet40.zip with its top folder renamed to raw/; PyG needs at least the
   folders of the ModelNet10 classes: bathtub, bed, chair, desk, dresser, monitor, night_stand, sofa, table,
   toilet)"""
MODELNET10 = ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet")
"""The folders whose presence PyG checks (``ModelNet.raw_file_names``), for ModelNet40 too."""
OfflineModelNet = offline_dataset(datasets.ModelNet, "ModelNet", LAYOUT, __name__)
"""``torch_geometric.datasets.ModelNet`` that downloads only with ``download=True``."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_common_arguments(parser, epochs=200, batch_size=32, lr=1e-3)
    parser.add_argument("--name", choices=("10", "40"), default="10", help="ModelNet10 or ModelNet40")
    parser.add_argument("--num-points", type=int, default=1024, help="points sampled per mesh")
    add_point_model_argument(parser)
    add_reldrop_arguments(parser, alpha=0.5, beta=0.5, p=1.0, fill=True)
    return parser


def check_meshes(root: Path, name: str) -> None:
    """Each split needs at least one mesh (PyG fails with an ``IndexError`` on an empty split)."""
    raw = root / "raw"
    if not all((raw / folder).is_dir() for folder in MODELNET10):
        return  # PyG calls download(): OfflineModelNet names the missing folders unless --download
    for split in ("train", "test"):
        if next(raw.glob(f"*/{split}/*_*.off"), None) is None:
            raise ValueError(f"ModelNet{name} under {root} has no {split} meshes (raw/<class>/{split}/*.off): "
                             f"expected\n{layout_at(LAYOUT, root)}")


def build_datasets(args: argparse.Namespace):
    """Train and test sets (sampled point clouds); raises ``FileNotFoundError`` (expected layout) when missing."""
    check_meshes(args.data_root, args.name)
    kwargs = dict(name=args.name, pre_transform=T.NormalizeScale(), transform=T.SamplePoints(args.num_points),
                  download=args.download)
    train = OfflineModelNet(str(args.data_root), train=True, **kwargs)
    test = OfflineModelNet(str(args.data_root), train=False, **kwargs)
    labels = int(train.y.max()) + 1
    if labels > int(args.name):
        raise ValueError(f"--name {args.name} expects {args.name} classes, but {args.data_root}/raw holds at least "
                         f"{labels} class folders.")
    return train, test, int(args.name)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Parse ``argv``, train, and return the per-epoch history (see ``common.run_point_cloud``: Adam, weight decay
    1e-4 unless ``--weight-decay`` is given); the clouds have 3 input channels (positions only)."""
    return run_point_cloud(build_parser(), argv, build_datasets=build_datasets, in_channels=lambda args: 3)


if __name__ == "__main__":
    main()
