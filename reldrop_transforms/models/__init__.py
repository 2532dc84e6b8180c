"""Point-cloud classifiers and neighbourhood operations in plain PyTorch, for examples and benchmarks.

Optional: the core package never imports this subpackage. It needs PyG (for ``MaxAggregation`` and ``Data``), but
neither pyg-lib nor torch-cluster.
"""

from .ops import ball_query, farthest_point_sampling, knn
from .pointnets import DGCNN, EdgeConv, PointNet, PointNet2, SetAbstraction, classifier_head, shared_mlp

__all__ = [
    "PointNet",
    "DGCNN",
    "PointNet2",
    "EdgeConv",
    "SetAbstraction",
    "shared_mlp",
    "classifier_head",
    "farthest_point_sampling",
    "knn",
    "ball_query",
]
