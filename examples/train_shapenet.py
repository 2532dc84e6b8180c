"""Train a point-cloud *shape classifier* on ShapeNet (PyG) with RelDrop (``RelevanceDropout3d``) on PyG batches.

PyG's ``datasets.ShapeNet`` is the ShapeNet part-segmentation benchmark (Yi et al. 2016): per-point part labels
``y`` and one object category per shape. This script uses it for **shape classification**, the task RelDrop was
evaluated on for point clouds: the graph label is the shape's category, its index in ``--categories`` (PyG's
``data.category``); the part labels are discarded. Part segmentation is left out for simplicity.

Data: the unzipped ``shapenetcore_partanno_segmentation_benchmark_v0_normal.zip`` with its top folder renamed to
``raw/`` under ``--data-root``::

    DATA_ROOT/raw/<synset id>/<shape id>.txt        one point per line: x y z nx ny nz part_label
    DATA_ROOT/raw/train_test_split/shuffled_{train,val,test}_file_list.json
                                                     ["shape_data/<synset id>/<shape id>", ...]

PyG considers the raw files present when the folders of all 16 synsets and ``train_test_split`` exist (whatever
``--categories`` selects) and otherwise calls its ``download()``; here that raises a ``FileNotFoundError`` naming
what is missing unless ``--download`` is given. Training uses the ``trainval`` split, evaluation ``test``. Clouds
are scaled into the unit sphere once (``NormalizeScale``, stored in ``DATA_ROOT/processed``) and ``--num-points``
points are drawn per access (``FixedPoints``) in the DataLoader workers; normals are the point features ``x``
(``--no-normals`` drops them). RelDrop runs on the collated ``Batch`` in the main process through
``RelevanceLoader`` and masks each point's position and normal together.

Example:
    python examples/train_shapenet.py --data-root ~/data/ShapeNet --categories Airplane Chair Table \\
        --model pointnet --epochs 100 --checkpoint runs/shapenet.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch_geometric import datasets, transforms as T
from torch_geometric.data import Data

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_arguments, add_point_model_argument, add_reldrop_arguments  # noqa: E402
from common import layout_at, make_parser, offline_dataset, run_point_cloud  # noqa: E402

CATEGORIES = tuple(datasets.ShapeNet.category_ids)
LAYOUT = """  DATA_ROOT/raw/<synset id>/<shape id>.txt   (x y z nx ny nz part_label per line)
  a folder for each of the 16 synsets: 02691156 (Airplane), 02773838 (Bag), ..., 04379243 (Table)
  DATA_ROOT/raw/train_test_split/shuffled_{train,val,test}_file_list.json
  (the unzipped shapenetcore_partanno_segmentation_benchmark_v0_normal.zip with its top folder renamed to raw/)"""
OfflineShapeNet = offline_dataset(datasets.ShapeNet, "ShapeNet", LAYOUT, __name__)
"""``torch_geometric.datasets.ShapeNet`` that downloads only with ``download=True``."""


class CategoryLabel:
    """Make the shape's category (``data.category``, its index in the selected categories) the graph label ``y``;
    the per-point part labels are dropped. A shallow copy: the dataset's own ``Data`` is left as it is."""

    def __call__(self, data: Data) -> Data:
        if getattr(data, "category", None) is None:
            raise ValueError("ShapeNet data without `category`: this PyG version stores it differently; the script "
                             "needs the category index of each shape as its label.")
        out = data.clone()
        out.y = torch.as_tensor(data.category, dtype=torch.long).reshape(1)
        del out.category
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_common_arguments(parser, epochs=100, batch_size=32, lr=1e-3)
    parser.add_argument("--categories", nargs="+", choices=CATEGORIES, default=list(CATEGORIES),
                        metavar="CATEGORY", help=f"shape categories, in label order, of: {', '.join(CATEGORIES)}")
    parser.add_argument("--num-points", type=int, default=1024, help="points drawn per shape")
    parser.add_argument("--normals", action=argparse.BooleanOptionalAction, default=True,
                        help="use the normals as point features x")
    add_point_model_argument(parser)
    add_reldrop_arguments(parser, alpha=0.5, beta=0.5, p=1.0, fill=True)
    return parser


def check_split_lists(root: Path, categories: list[str]) -> None:
    """Each split list needs at least one shape of ``categories`` (PyG fails with an ``IndexError`` otherwise)."""
    folder = root / "raw" / "train_test_split"
    synsets = {datasets.ShapeNet.category_ids[category] for category in categories}
    for split in ("train", "val", "test"):
        path = folder / f"shuffled_{split}_file_list.json"
        if not path.is_file():
            continue  # OfflineShapeNet names the missing files
        names = json.loads(path.read_text())
        if not any(name.split("/")[1] in synsets for name in names if name.count("/") >= 2):
            raise ValueError(f"{path} lists no shape of the categories {categories}; every split (train, val, "
                             f"test) needs at least one. Expected\n{layout_at(LAYOUT, root)}")


def build_datasets(args: argparse.Namespace):
    """``trainval`` and ``test`` sets labelled by category; ``FileNotFoundError`` (expected layout) when missing."""
    check_split_lists(args.data_root, list(args.categories))
    transform = T.Compose([T.FixedPoints(args.num_points), CategoryLabel()])
    kwargs = dict(categories=list(args.categories), include_normals=args.normals, pre_transform=T.NormalizeScale(),
                  transform=transform, download=args.download)
    train = OfflineShapeNet(str(args.data_root), split="trainval", **kwargs)
    test = OfflineShapeNet(str(args.data_root), split="test", **kwargs)
    return train, test, len(args.categories)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Parse ``argv``, train, and return the per-epoch history (see ``common.run_point_cloud``: Adam, weight decay
    1e-4 unless ``--weight-decay`` is given); the clouds have 6 input channels with normals, else 3."""
    return run_point_cloud(build_parser(), argv, build_datasets=build_datasets,
                           in_channels=lambda args: 6 if args.normals else 3)


if __name__ == "__main__":
    main()
