"""Neighbourhood operations against slow, obviously-correct per-cloud Python references (float64, several seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from reldrop_transforms.models import ball_query, farthest_point_sampling, knn

SEEDS = [0, 1, 2]
SIZES = [7, 1, 12, 3, 20]  # clouds of different sizes in one batch, a single-point cloud among them


def _batch_vector(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate(sizes)])


def _offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:b]) for b in range(len(sizes))]


def _dist2(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum((float(a[d]) - float(b[d])) ** 2 for d in range(a.shape[0]))


# -- references --------------------------------------------------------------------------------------------------------
def ref_fps(pos: torch.Tensor, count: int, start: int = 0) -> list[int]:
    """Textbook farthest point sampling on one cloud; ties to the lowest index."""
    chosen = [start]
    while len(chosen) < count:
        best, best_d = -1, -1.0
        for i in range(pos.shape[0]):
            d = min(_dist2(pos[i], pos[j]) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def ref_knn(x: torch.Tensor, y: torch.Tensor, k: int) -> list[list[int]]:
    """For each query, the indices of its k nearest points, nearest first (ties by index)."""
    return [sorted(range(x.shape[0]), key=lambda i: (_dist2(x[i], q), i))[:k] for q in y]


def ref_ball(pos: torch.Tensor, centers: torch.Tensor, radius: float, max_neighbors: int) -> list[list[int]]:
    """For each centre, the first max_neighbors points within radius in index order; if none, the nearest."""
    out = []
    for c in centers:
        inside = [i for i in range(pos.shape[0]) if _dist2(pos[i], c) <= radius * radius][:max_neighbors]
        if not inside and pos.shape[0]:
            inside = [min(range(pos.shape[0]), key=lambda i: (_dist2(pos[i], c), i))]
        out.append(inside)
    return out


class _Names(torch.overrides.TorchFunctionMode):
    """A mode that records the name of every operation it sees."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


# -- farthest point sampling -------------------------------------------------------------------------------------------
class TestFarthestPointSampling:
    @pytest.mark.parametrize("seed", SEEDS)
    def test_dense_matches_reference(self, seed):
        gen = torch.Generator().manual_seed(seed)
        pos = torch.randn(3, 15, 3, generator=gen, dtype=torch.float64)
        index = farthest_point_sampling(pos, num_samples=6)
        assert index.shape == (3, 6) and index.dtype == torch.long
        for b in range(3):
            assert index[b].tolist() == ref_fps(pos[b], 6)

    def test_sampling_loop_is_one_operation_to_a_mode(self):
        """Under a TorchFunctionMode (the fast LRP engine's, which watches every operation of a forward), the
        sampling dispatches as one operation, not six per sampled point (and a hundred around the loop); the same
        indices, also under ``torch.device``'s mode."""
        gen = torch.Generator().manual_seed(0)
        pos = torch.randn(sum(SIZES), 3, generator=gen, dtype=torch.float64)
        batch = _batch_vector(SIZES)
        expected = farthest_point_sampling(pos, batch, ratio=1.0)
        with _Names() as seen:
            index = farthest_point_sampling(pos, batch, ratio=1.0)
        assert torch.equal(index, expected)
        assert seen.names.count("farthest_point_sampling") == 1 and "argmax" not in seen.names
        with _Names() as fewer:
            farthest_point_sampling(pos, batch, ratio=0.25)
        assert len(fewer.names) == len(seen.names)  # whatever the number of steps (six operations each before)
        with torch.device("cpu"):
            assert torch.equal(farthest_point_sampling(pos, batch, ratio=1.0), expected)

    def test_plain_indices_for_a_tensor_subclass(self):
        # the loop's dispatch handed a subclass of pos its indices as that subclass
        class Tagged(torch.Tensor):
            pass

        gen = torch.Generator().manual_seed(0)
        pos = torch.randn(2, 9, 3, generator=gen, dtype=torch.float64)
        index = farthest_point_sampling(pos.as_subclass(Tagged), num_samples=4)
        assert type(index) is torch.Tensor
        assert torch.equal(index, farthest_point_sampling(pos, num_samples=4))

    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
    def test_batch_matches_reference(self, seed, ratio):
        gen = torch.Generator().manual_seed(seed)
        pos = torch.randn(sum(SIZES), 3, generator=gen, dtype=torch.float64)
        batch = _batch_vector(SIZES)
        index = farthest_point_sampling(pos, batch, ratio=ratio)
        expected = []
        for n, offset in zip(SIZES, _offsets(SIZES)):
            expected += [offset + i for i in ref_fps(pos[offset : offset + n], math.ceil(ratio * n))]
        assert index.tolist() == expected

    def test_num_samples_per_cloud_caps_at_cloud_size(self):
        pos = torch.randn(sum(SIZES), 3, dtype=torch.float64)
        index = farthest_point_sampling(pos, _batch_vector(SIZES), num_samples=5)
        counts = torch.bincount(_batch_vector(SIZES)[index], minlength=len(SIZES))
        assert counts.tolist() == [min(5, n) for n in SIZES]
        assert index.unique().numel() == index.numel()  # no point twice

    def test_first_point_of_each_cloud_by_default(self):
        pos = torch.randn(sum(SIZES), 3)
        batch = _batch_vector(SIZES)
        index = farthest_point_sampling(pos, batch, ratio=0.5)
        first = torch.cat([index[batch[index] == b][:1] for b in range(len(SIZES))])
        assert first.tolist() == _offsets(SIZES)

    def test_random_start_is_reproducible_and_matches_reference(self):
        pos = torch.randn(sum(SIZES), 3, dtype=torch.float64)
        batch = _batch_vector(SIZES)
        a, b = (
            farthest_point_sampling(
                pos, batch, ratio=0.5, random_start=True, generator=torch.Generator().manual_seed(3)
            )
            for _ in range(2)
        )
        assert torch.equal(a, b)
        for cloud, (n, offset) in enumerate(zip(SIZES, _offsets(SIZES))):
            mine = (a[batch[a] == cloud] - offset).tolist()
            assert mine == ref_fps(pos[offset : offset + n], math.ceil(0.5 * n), start=mine[0])
        starts = set()
        for seed in range(20):
            gen = torch.Generator().manual_seed(seed)
            index = farthest_point_sampling(pos[:20], ratio=0.1, random_start=True, generator=gen)
            starts.add(int(index[0]))
        assert len(starts) > 1

    def test_single_cloud_without_batch_and_dtype_float32(self):
        pos = torch.randn(10, 3)
        assert farthest_point_sampling(pos, num_samples=4).tolist() == ref_fps(pos.double(), 4)

    def test_empty(self):
        assert farthest_point_sampling(torch.zeros(0, 3)).shape == (0,)
        assert farthest_point_sampling(torch.zeros(2, 0, 3), ratio=0.5).shape == (2, 0)

    def test_does_not_track_gradient_or_modify_input(self):
        pos = torch.randn(10, 3, requires_grad=True)
        version = pos._version
        index = farthest_point_sampling(pos)
        assert not index.requires_grad and pos._version == version

    def test_errors(self):
        pos = torch.randn(10, 3)
        with pytest.raises(ValueError, match="either ratio or num_samples"):
            farthest_point_sampling(pos, ratio=0.5, num_samples=3)
        with pytest.raises(ValueError, match=r"`ratio` should be in the interval \(0.0, 1.0\]"):
            farthest_point_sampling(pos, ratio=0.0)
        with pytest.raises(ValueError, match="`num_samples` should be a positive int"):
            farthest_point_sampling(pos, num_samples=0)
        with pytest.raises(ValueError, match="more than the 10 points"):
            farthest_point_sampling(pos[None], num_samples=11)
        with pytest.raises(ValueError, match=r"shape \(N, D\) with a batch vector or \(B, N, D\)"):
            farthest_point_sampling(torch.randn(10))
        with pytest.raises(TypeError, match="floating-point pos"):
            farthest_point_sampling(torch.zeros(10, 3, dtype=torch.long))
        with pytest.raises(ValueError, match=r"batch as an integer tensor of shape \(10,\)"):
            farthest_point_sampling(pos, torch.zeros(9, dtype=torch.long))
        with pytest.raises(ValueError, match="sorted in ascending order"):
            farthest_point_sampling(pos, torch.tensor([0, 1] * 5))
        with pytest.raises(ValueError, match="batch is only for pos of shape"):
            farthest_point_sampling(pos[None], torch.zeros(10, dtype=torch.long))


# -- knn ---------------------------------------------------------------------------------------------------------------
class TestKnn:
    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("dims", [3, 16])
    def test_dense_matches_reference(self, seed, dims):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 30, dims, generator=gen, dtype=torch.float64)
        y = torch.randn(2, 9, dims, generator=gen, dtype=torch.float64)
        index = knn(x, y, 5)
        assert index.shape == (2, 9, 5) and index.dtype == torch.long
        for b in range(2):
            assert index[b].tolist() == ref_knn(x[b], y[b], 5)

    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("k", [1, 4, 25])  # 25: larger than every cloud
    def test_batch_matches_reference(self, seed, k):
        gen = torch.Generator().manual_seed(seed)
        x_sizes, y_sizes = SIZES, [3, 2, 0, 5, 4]  # the third cloud has no queries
        x = torch.randn(sum(x_sizes), 3, generator=gen, dtype=torch.float64)
        y = torch.randn(sum(y_sizes), 3, generator=gen, dtype=torch.float64)
        row, col = knn(x, y, k, _batch_vector(x_sizes), _batch_vector(y_sizes))
        expected_row, expected_col = [], []
        for nx, ny, ox, oy in zip(x_sizes, y_sizes, _offsets(x_sizes), _offsets(y_sizes)):
            for q, neighbours in enumerate(ref_knn(x[ox : ox + nx], y[oy : oy + ny], k)):
                expected_row += [oy + q] * len(neighbours)
                expected_col += [ox + i for i in neighbours]
        assert row.tolist() == expected_row and col.tolist() == expected_col

    def test_self_is_first_neighbour(self):
        x = torch.randn(sum(SIZES), 8, dtype=torch.float64)
        batch = _batch_vector(SIZES)
        row, col = knn(x, x, 4, batch, batch)
        first = torch.ones_like(row, dtype=torch.bool)
        first[1:] = row[1:] != row[:-1]
        assert torch.equal(row[first], torch.arange(x.shape[0]))
        assert torch.equal(col[first], torch.arange(x.shape[0]))
        assert torch.equal(batch[row], batch[col])  # never across clouds

    def test_cloud_empty_in_x(self):
        x = torch.randn(4, 3)
        y = torch.randn(3, 3)
        row, col = knn(x, y, 2, torch.tensor([0, 0, 2, 2]), torch.tensor([0, 1, 2]))
        assert row.tolist() == [0, 0, 2, 2]  # query 1 has no points in its cloud
        assert set(col[:2].tolist()) == {0, 1} and set(col[2:].tolist()) == {2, 3}

    def test_errors(self):
        x = torch.randn(10, 3)
        with pytest.raises(ValueError, match="`k` should be a positive int"):
            knn(x, x, 0)
        with pytest.raises(ValueError, match="k=11 is more than the 10 points"):
            knn(x[None], x[None], 11)
        with pytest.raises(ValueError, match="x and y of shapes"):
            knn(x, torch.randn(4, 2), 2)
        with pytest.raises(ValueError, match="x and y of shapes"):
            knn(x[None], x, 2)
        with pytest.raises(ValueError, match="batch vectors are only for"):
            knn(x[None], x[None], 2, batch_x=torch.zeros(10, dtype=torch.long))
        with pytest.raises(ValueError, match=r"batch_y as an integer tensor of shape \(10,\)"):
            knn(x, x, 2, batch_y=torch.zeros(10))


# -- ball query --------------------------------------------------------------------------------------------------------
class TestBallQuery:
    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("max_neighbors", [1, 4, 40])  # 40: more than any cloud
    def test_batch_matches_reference(self, seed, max_neighbors):
        gen = torch.Generator().manual_seed(seed)
        pos = torch.rand(sum(SIZES), 3, generator=gen, dtype=torch.float64)
        center_sizes = [2, 1, 4, 0, 3]
        centers = torch.rand(sum(center_sizes), 3, generator=gen, dtype=torch.float64)
        row, col = ball_query(pos, centers, 0.45, max_neighbors, _batch_vector(SIZES), _batch_vector(center_sizes))
        expected_row, expected_col = [], []
        for n, m, op, oc in zip(SIZES, center_sizes, _offsets(SIZES), _offsets(center_sizes)):
            for c, group in enumerate(ref_ball(pos[op : op + n], centers[oc : oc + m], 0.45, max_neighbors)):
                expected_row += [oc + c] * len(group)
                expected_col += [op + i for i in group]
        assert row.tolist() == expected_row and col.tolist() == expected_col

    @pytest.mark.parametrize("seed", SEEDS)
    def test_dense_matches_reference(self, seed):
        gen = torch.Generator().manual_seed(seed)
        pos = torch.rand(2, 25, 3, generator=gen, dtype=torch.float64)
        centers = torch.rand(2, 6, 3, generator=gen, dtype=torch.float64)
        index, mask = ball_query(pos, centers, 0.3, 5, return_mask=True)
        assert index.shape == mask.shape == (2, 6, 5) and mask.dtype == torch.bool
        for b in range(2):
            for c, group in enumerate(ref_ball(pos[b], centers[b], 0.3, 5)):
                within = [i for i in group if _dist2(pos[b, i], centers[b, c]) <= 0.09]
                assert mask[b, c].tolist() == [j < len(within) for j in range(5)]
                assert index[b, c].tolist() == group + [group[0]] * (5 - len(group))  # padding: first neighbour
        assert torch.equal(ball_query(pos, centers, 0.3, 5), index)

    def test_empty_neighbourhood_gets_nearest_point(self):
        pos = torch.tensor([[0.0, 0, 0], [1, 0, 0], [5, 0, 0]])
        centers = torch.tensor([[4.0, 0, 0], [0.1, 0, 0]])
        row, col = ball_query(pos, centers, 0.5, 3)
        assert row.tolist() == [0, 1] and col.tolist() == [2, 0]
        index, mask = ball_query(pos[None], centers[None], 0.5, 3, return_mask=True)
        assert index.tolist() == [[[2, 2, 2], [0, 0, 0]]]
        assert mask.tolist() == [[[False] * 3, [True, False, False]]]

    def test_centres_sampled_from_points_contain_themselves(self):
        pos = torch.rand(sum(SIZES), 3)
        batch = _batch_vector(SIZES)
        index = farthest_point_sampling(pos, batch, ratio=0.5)
        row, col = ball_query(pos, pos[index], 0.01, 8, batch, batch[index])
        assert torch.equal(row, torch.arange(index.numel()))  # only itself within a tiny radius
        assert torch.equal(col, index)

    def test_cloud_without_points(self):
        row, col = ball_query(torch.rand(3, 3), torch.rand(2, 3), 0.5, 4, torch.tensor([0, 0, 0]), torch.tensor([0, 1]))
        assert set(row.tolist()) == {0}
        empty = ball_query(torch.zeros(0, 3), torch.rand(2, 3), 0.5, 4)
        assert empty[0].numel() == empty[1].numel() == 0

    def test_errors(self):
        pos = torch.rand(10, 3)
        with pytest.raises(ValueError, match="`radius` should be a positive number"):
            ball_query(pos, pos, 0.0, 4)
        with pytest.raises(ValueError, match="`max_neighbors` should be a positive int"):
            ball_query(pos, pos, 0.1, 0)
        with pytest.raises(ValueError, match="pos and centers of shapes"):
            ball_query(pos, torch.rand(3, 2), 0.1, 4)
        with pytest.raises(ValueError, match="return_mask is only for dense"):
            ball_query(pos, pos, 0.1, 4, return_mask=True)
        with pytest.raises(ValueError, match="dense clouds of 0 points"):
            ball_query(torch.zeros(1, 0, 3), torch.zeros(1, 2, 3), 0.1, 4)
        with pytest.raises(ValueError, match="sorted in ascending order"):
            ball_query(pos, pos, 0.1, 4, torch.tensor([1, 0] * 5))


# -- under a TorchFunctionMode -----------------------------------------------------------------------------------------
_QUERIES = {
    "knn_dense": (knn, lambda p, b: (p[:40].view(5, 8, 3), p[:40].view(5, 8, 3)[:, :4], 3), {}),
    "knn_pyg": (knn, lambda p, b: (p, p, 4, b, b), {}),
    "ball_query_dense": (ball_query, lambda p, b: (p[:40].view(5, 8, 3), p[:40].view(5, 8, 3)[:, :5], 0.8,
                                                   6), {"return_mask": True}),
    "ball_query_pyg": (ball_query, lambda p, b: (p, p, 0.8, 6, b, b), {}),
    "fps_pyg": (farthest_point_sampling, lambda p, b: (p, b), {"ratio": 0.5}),
}


@pytest.mark.parametrize("name", sorted(_QUERIES))
def test_each_query_is_one_operation_to_a_mode(name):
    """A TorchFunctionMode (the fast LRP engine's watches every operation of a forward) sees each neighbourhood
    query as one operation (hundreds inside: knn 315 and ball_query 246 on a DGCNN / PointNet++ forward before), run
    without gradients (as everything inside), with the same indices as without a mode, also under
    ``torch.device``'s mode and for a tensor subclass (plain indices)."""

    class Tagged(torch.Tensor):
        pass

    function, arguments, options = _QUERIES[name]
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(sum(SIZES), 3, generator=gen, dtype=torch.float64)
    args = arguments(pos, _batch_vector(SIZES))
    expected = function(*args, **options)
    expected = expected if isinstance(expected, tuple) else (expected,)
    grad_modes = []

    class Names(_Names):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == function.__name__:
                grad_modes.append(torch.is_grad_enabled())
            return super().__torch_function__(func, types, args, kwargs)

    with Names() as seen:
        got = function(*args, **options)
    assert seen.names.count(function.__name__) == 1
    assert set(seen.names) <= {function.__name__, "_set_grad_enabled"}  # (torch.no_grad around it)
    assert grad_modes == [False]
    tagged = tuple(arg.as_subclass(Tagged) if isinstance(arg, torch.Tensor) else arg for arg in args)
    with torch.device("cpu"):
        on_device = function(*args, **options)
    for each in (got, function(*tagged, **options), on_device):
        each = each if isinstance(each, tuple) else (each,)
        assert all(type(t) is torch.Tensor and torch.equal(t, e) for t, e in zip(each, expected, strict=True))
