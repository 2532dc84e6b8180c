"""Tests of RelevanceErasing3d: drop the points within a ball around one of the top-k most relevant points.

Every mask is compared with an independent computation: the per-point relevance from the public attribution
functions (summed over each point's channels), then per cloud in a Python loop the bounding-box diagonal of the
positions, the ranking, the centre and radius from draws of a generator seeded like the transform's, and the
"keep the least relevant point" rescue of a cloud that would be emptied.
"""

from __future__ import annotations

import pickle
from functools import partial

import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform

import reldrop_transforms
from reldrop_transforms import RelevanceErasing3d
from reldrop_transforms.attribution import relevance, relevance_graph
from reldrop_transforms.functional import relevance_ball_mask

import helpers
from helpers import POINT_NUM_CLASSES as NUM_CLASSES
from helpers import assert_dense_points_zeroed

SIZES = (6, 11, 14, 9)


# The tiny models of tests/helpers.py without BatchNorm.
DensePointNet = partial(helpers.DensePointNet, batch_norm=False)
GraphPointNet = partial(helpers.GraphPointNet, batch_norm=False)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def make_points(batch_size=6, num_points=16, channels=6, *, channels_first=False, seed=0, dtype=torch.float32):
    g = seeded(seed)
    points = torch.randn(batch_size, num_points, channels, generator=g, dtype=dtype)
    points[..., :3] *= torch.rand(batch_size, 1, 3, generator=g, dtype=dtype) * 4  # boxes of different sizes
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (points.transpose(1, 2).contiguous() if channels_first else points), labels


def make_batch(sizes=SIZES, *, seed=0, features=2):
    datas = []
    for i, n in enumerate(sizes):
        g = seeded(seed + 10 * i)
        data = Data(pos=torch.randn(n, 3, generator=g) * (i + 1), y=torch.tensor([(seed + i) % NUM_CLASSES]),
                    point_label=torch.arange(n) + 100 * i)
        if features:
            data.x = torch.randn(n, features, generator=g)
        datas.append(data)
    return Batch.from_data_list(datas)


# -- the independent reference -------------------------------------------------------------------------------


def loop_ball_mask(per_point, pos, draws, radius, top_k, clouds):
    """``clouds``: a list of index tensors, one per cloud. Per cloud: diagonal of the bounding box of ``pos``,
    points ranked by relevance (descending, ties by order), centre of rank ``floor(u0 * min(k, n))`` (``n`` for
    constant relevance), radius ``(lo + (hi - lo) * u1) * diagonal``; all dropped -> keep the least relevant."""
    mask = torch.zeros(per_point.shape[0], dtype=torch.bool)
    for i, members in enumerate(clouds):
        rel, xyz = per_point[members], pos[members]
        values = rel.tolist()
        ranking = sorted(range(len(values)), key=lambda j: -values[j])
        choices = len(values) if max(values) == min(values) else min(top_k, len(values))
        centre = ranking[min(int(float(draws[i, 0]) * choices), choices - 1)]
        diagonal = (xyz.max(0).values - xyz.min(0).values).norm()
        r = (radius[0] + (radius[1] - radius[0]) * draws[i, 1]) * diagonal
        dropped = (xyz - xyz[centre]).norm(dim=1) <= r
        if bool(dropped.all()):
            dropped[values.index(min(values))] = False
        mask[members] = dropped
    return mask


def reference_dense(model, points, labels, *, radius, top_k, seed, p=1.0, channels_first=False):
    """Coins (p < 1), relevance of the selected clouds, then the loop with (B', 3) draws; returns (B, N) mask."""
    g = seeded(seed)
    channels_last = points.transpose(1, 2) if channels_first else points
    batch_size, num_points, _ = channels_last.shape
    index = torch.arange(batch_size) if p >= 1 else (torch.rand(batch_size, generator=g) < p).nonzero().flatten()
    mask = torch.zeros(batch_size, num_points, dtype=torch.bool)
    if index.numel() == 0:
        return mask, index
    rel = relevance(model, points[index], None if labels is None else labels[index]).sum(1 if channels_first else 2)
    draws = torch.rand(index.numel(), 3, generator=g, dtype=points.dtype)
    clouds = [torch.arange(i * num_points, (i + 1) * num_points) for i in range(index.numel())]
    sub = loop_ball_mask(rel.reshape(-1), channels_last[index][..., :3].reshape(-1, 3), draws, radius, top_k, clouds)
    mask[index] = sub.reshape(index.numel(), num_points)
    return mask, index


def graph_per_point(model, batch, labels):
    return sum(r.sum(1) for r in relevance_graph(model, batch, labels).values())


def reference_graph(model, batch, labels, *, radius, top_k, seed, p=1.0):
    """The coins when p < 1 first, then the draws (num_graphs, 3): the rule for p (every cloud is attributed)."""
    per_point = graph_per_point(model, batch, labels)
    g = seeded(seed)
    coins = torch.ones(batch.num_graphs, dtype=torch.bool) if p >= 1 else torch.rand(batch.num_graphs, generator=g) < p
    draws = torch.rand(batch.num_graphs, 3, generator=g, dtype=batch.pos.dtype)
    clouds = [(batch.batch == i).nonzero().flatten() for i in range(batch.num_graphs)]
    mask = loop_ball_mask(per_point, batch.pos, draws, radius, top_k, clouds) & coins[batch.batch]
    return mask, per_point


def expected_filled(values, mask, fill, clouds):
    out = values.clone()
    for members in clouds:
        drop = mask[members]
        if fill == "first":
            out[members[drop]] = values[members[~drop][0]]
        elif fill == "zero":
            out[members[drop]] = 0
        else:
            out[members[drop]] = fill
    return out


def assert_graph_output(out, batch, mask, fill):
    assert isinstance(out, Batch) and out is not batch and out.num_graphs == batch.num_graphs
    if fill == "remove":
        keep = ~mask
        sizes = torch.stack([keep[batch.batch == i].sum() for i in range(batch.num_graphs)])
        assert torch.equal(out.ptr, torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]))
        assert torch.equal(out.batch, torch.arange(batch.num_graphs).repeat_interleave(sizes))
        for i in range(batch.num_graphs):
            example, original = out.get_example(i), batch.get_example(i)
            kept = keep[batch.ptr[i]:batch.ptr[i + 1]]
            for key in ("pos", "x", "point_label"):
                if key in original:
                    assert torch.equal(example[key], original[key][kept]), (i, key)
            assert torch.equal(example.y, original.y)
        return
    assert torch.equal(out.batch, batch.batch) and torch.equal(out.ptr, batch.ptr)
    clouds = [(batch.batch == i).nonzero().flatten() for i in range(batch.num_graphs)]
    for key in ("pos", "x"):
        if key in batch:
            assert torch.equal(out[key], expected_filled(batch[key], mask, fill, clouds)), key
    labels = batch.point_label  # an integer attribute: only "first" moves it
    assert torch.equal(out.point_label, expected_filled(labels, mask, "first", clouds) if fill == "first" else labels)


class TestRelevanceErasing3d:
    # -- dense input -------------------------------------------------------------------------------------------

    @pytest.mark.parametrize("channels_first", [False, True])
    @pytest.mark.parametrize("radius, top_k, seed", [((0.1, 0.3), 1, 0), ((0.2, 0.5), 3, 1), ((0.0, 0.8), 100, 2)])
    def test_dense_matches_reference(self, channels_first, radius, top_k, seed):
        model = DensePointNet(channels_first=channels_first)
        points, labels = make_points(channels_first=channels_first, seed=seed)
        t = RelevanceErasing3d(model, radius=radius, top_k=top_k, generator=seeded(seed),
                               channels_first=channels_first)
        out, out_labels = t(points, labels)
        mask, _ = reference_dense(model, points, labels, radius=radius, top_k=top_k, seed=seed,
                                  channels_first=channels_first)
        assert bool(mask.any()) and bool((~mask).any())
        assert_dense_points_zeroed(out, out_labels, points, labels, mask, channels_first)

    @pytest.mark.parametrize("fill", ["zero", "first", -1.5])
    def test_dense_fills(self, fill):
        model = DensePointNet()
        points, labels = make_points(seed=3)
        out, _ = RelevanceErasing3d(model, radius=(0.2, 0.5), fill=fill, generator=seeded(3))(points, labels)
        mask, _ = reference_dense(model, points, labels, radius=(0.2, 0.5), top_k=1, seed=3)
        expected = points.clone()
        for b in range(points.shape[0]):
            first = int((~mask[b]).nonzero()[0, 0])
            expected[b, mask[b]] = 0.0 if fill == "zero" else points[b, first] if fill == "first" else fill
        assert bool(mask.any())
        assert torch.equal(out, expected)

    def test_dense_float64_and_p_half(self):
        model = DensePointNet().double()
        points, labels = make_points(batch_size=10, dtype=torch.float64, seed=4)
        out, _ = RelevanceErasing3d(model, p=0.5, radius=(0.2, 0.4), generator=seeded(4))(points, labels)
        mask, index = reference_dense(model, points, labels, radius=(0.2, 0.4), top_k=1, seed=4, p=0.5)
        assert 0 < index.numel() < 10 and out.dtype == torch.float64
        assert torch.equal(out[mask], torch.zeros_like(out[mask])) and torch.equal(out[~mask], points[~mask])
        unselected = torch.ones(10, dtype=torch.bool)
        unselected[index] = False
        assert torch.equal(out[unselected], points[unselected])  # unselected clouds are unchanged

    def test_dense_p_zero_returns_input(self):
        points, labels = make_points()
        out = RelevanceErasing3d(DensePointNet(), p=0.0)(points, labels)
        assert out[0] is points and out[1] is labels

    def test_dense_most_relevant_point_dropped(self):
        model = DensePointNet()
        points, labels = make_points(batch_size=12, seed=5)
        out, _ = RelevanceErasing3d(model, radius=(0.0, 0.05), top_k=1, fill=1e3, generator=seeded(5))(points, labels)
        rel = relevance(model, points, labels).sum(2)
        rows = torch.arange(12)
        assert bool((out[rows, rel.argmax(1)] == 1e3).all())
        assert bool(((out == 1e3).all(2).sum(1) < 16).all())

    def test_dense_never_empties_a_cloud(self):
        # radius = the diagonal: every point is in the ball; exactly the least relevant point survives.
        model = DensePointNet()
        points, labels = make_points(seed=6)
        out, _ = RelevanceErasing3d(model, radius=(1.0, 1.0), generator=seeded(6))(points, labels)
        rel = relevance(model, points, labels).sum(2)
        kept = (out != 0).any(2)
        assert torch.equal(kept.sum(1), torch.ones(points.shape[0], dtype=torch.long))
        assert torch.equal(kept.float().argmax(1), rel.argmin(1))
        # a one-point cloud is its own most relevant point: it is kept, not emptied
        single, single_labels = make_points(batch_size=3, num_points=1, seed=7)
        out, _ = RelevanceErasing3d(model, generator=seeded(7))(single, single_labels)
        assert torch.equal(out, single)

    def test_dense_radius_relative_to_bounding_box(self):
        # Scaling the features (channels 3:) changes the relevance but not the geometry; scaling one cloud's
        # coordinates does not change the other clouds' balls. Both are checked by the per-cloud reference.
        model = DensePointNet()
        points, labels = make_points(seed=8)
        points[0, :, :3] *= 50.0
        points[1, :, 3:] *= 10.0
        out, _ = RelevanceErasing3d(model, radius=(0.3, 0.4), top_k=2, generator=seeded(8))(points, labels)
        mask, _ = reference_dense(model, points, labels, radius=(0.3, 0.4), top_k=2, seed=8)
        assert torch.equal(out[mask], torch.zeros_like(out[mask])) and torch.equal(out[~mask], points[~mask])
        assert bool(mask[0].any()) and bool((~mask[0]).any())  # the large cloud's ball scales with it

    def test_dense_predicted_class_without_labels(self):
        model = DensePointNet()
        points, _ = make_points(seed=9)
        out = RelevanceErasing3d(model, labels_getter=None, generator=seeded(9))(points)
        mask, _ = reference_dense(model, points, None, radius=(0.1, 0.3), top_k=1, seed=9)
        assert torch.equal(out[mask], torch.zeros_like(out[mask])) and torch.equal(out[~mask], points[~mask])

    def test_dense_input_not_modified(self):
        model = DensePointNet()
        points, labels = make_points(seed=10)
        before, version = points.clone(), points._version
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        out, _ = RelevanceErasing3d(model, generator=seeded(10))(points, labels)
        assert torch.equal(points, before) and points._version == version and not torch.equal(out, points)
        assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    # -- PyG input ---------------------------------------------------------------------------------------------

    def test_is_a_pyg_base_transform(self):
        t = RelevanceErasing3d(GraphPointNet(), radius=(0.2, 0.3), top_k=2)
        assert isinstance(t, BaseTransform)
        assert reldrop_transforms.RelevanceErasing3d is RelevanceErasing3d
        assert "RelevanceErasing3d(" in repr(t) and "radius=(0.2, 0.3)" in repr(t) and "top_k=2" in repr(t)

    @pytest.mark.parametrize("fill", ["remove", "zero", "first", 2.5])
    @pytest.mark.parametrize("top_k, features", [(1, 2), (3, 0)])
    def test_pyg_matches_reference(self, fill, top_k, features):
        model = GraphPointNet(in_channels=3 + features)
        batch = make_batch(seed=1, features=features)
        before = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
        out = RelevanceErasing3d(model, radius=(0.2, 0.5), top_k=top_k, fill=fill, generator=seeded(11))(batch)
        mask, _ = reference_graph(model, batch, batch.y, radius=(0.2, 0.5), top_k=top_k, seed=11)
        assert bool(mask.any()) and bool((~mask).any())
        assert_graph_output(out, batch, mask, fill)
        for key, value in before.items():
            assert torch.equal(batch[key], value), key  # the input batch is not modified

    def test_pyg_unsorted_batch_vector_kernel(self):
        # The transform's kernel on a shuffled flat cloud gives the shuffled mask (distinct relevance).
        model = GraphPointNet()
        batch = make_batch(seed=2)
        per_point = graph_per_point(model, batch, batch.y)
        perm = torch.randperm(batch.num_nodes, generator=seeded(2))
        kwargs = dict(radius=(0.2, 0.5), top_k=2, num_segments=batch.num_graphs)
        ordered = relevance_ball_mask(per_point, batch.pos, generator=seeded(3), batch=batch.batch, **kwargs)
        shuffled = relevance_ball_mask(per_point[perm], batch.pos[perm], generator=seeded(3),
                                       batch=batch.batch[perm], **kwargs)
        assert torch.equal(shuffled, ordered[perm])

    def test_pyg_p_half_matches_reference(self):
        model = GraphPointNet()
        batch = make_batch(sizes=(6, 7, 5, 8, 9, 6, 7, 5), seed=3)
        out = RelevanceErasing3d(model, p=0.5, radius=(0.3, 0.5), fill="remove", generator=seeded(12))(batch)
        mask, _ = reference_graph(model, batch, batch.y, radius=(0.3, 0.5), top_k=1, seed=12, p=0.5)
        per_cloud = torch.stack([mask[batch.batch == i].any() for i in range(batch.num_graphs)])
        assert 0 < int(per_cloud.sum()) < batch.num_graphs
        assert_graph_output(out, batch, mask, "remove")

    def test_pyg_most_relevant_point_dropped_and_never_empty(self):
        model = GraphPointNet()
        batch = make_batch(seed=4)
        per_point = graph_per_point(model, batch, batch.y)
        out = RelevanceErasing3d(model, radius=(0.0, 0.05), fill=-7.0, generator=seeded(13))(batch)
        for i in range(batch.num_graphs):
            lo = int(batch.ptr[i])
            top = lo + int(per_point[lo:int(batch.ptr[i + 1])].argmax())
            assert bool((out.pos[top] == -7.0).all())
        full = RelevanceErasing3d(model, radius=(1.0, 1.0), fill="remove", generator=seeded(13))(batch)
        assert torch.equal(full.ptr, torch.arange(batch.num_graphs + 1))
        for i in range(batch.num_graphs):
            lo, hi = int(batch.ptr[i]), int(batch.ptr[i + 1])
            least = lo + int(per_point[lo:hi].argmin())
            assert torch.equal(full.get_example(i).pos, batch.pos[least:least + 1])

    def test_pyg_single_data_in_compose(self):
        model = GraphPointNet()
        data = make_batch(sizes=(12,), seed=5).get_example(0)
        pipeline = T.Compose([RelevanceErasing3d(model, radius=(0.3, 0.5), fill="remove", generator=seeded(14)),
                              T.Center()])
        out = pipeline(data)
        assert isinstance(out, Data) and not isinstance(out, Batch)
        one = Batch.from_data_list([data])
        mask, _ = reference_graph(model, one, one.y, radius=(0.3, 0.5), top_k=1, seed=14)
        assert bool(mask.any()) and bool((~mask).any())
        kept = data.pos[~mask]
        torch.testing.assert_close(out.pos, kept - kept.mean(0, keepdim=True))
        assert torch.equal(out.x, data.x[~mask]) and data.num_nodes == 12

    def test_pickle_round_trip(self):
        t = RelevanceErasing3d(GraphPointNet(), fill="remove", generator=seeded(0))
        clone = pickle.loads(pickle.dumps(t))
        batch = make_batch(seed=6)
        mask, _ = reference_graph(clone.model, batch, batch.y, radius=(0.1, 0.3), top_k=1, seed=0)
        assert_graph_output(clone(batch), batch, mask, "remove")

    # -- errors ------------------------------------------------------------------------------------------------

    @pytest.mark.parametrize("kwargs, error, match", [
        ({"radius": (0.3, 0.1)}, ValueError, r"`radius` should be an increasing pair in >= 0.0, but got \(0.3, 0.1\)"),
        ({"radius": (-0.1, 0.2)}, ValueError, r"`radius` should be an increasing pair"),
        ({"radius": 0.2}, TypeError, r"`radius` should be a sequence \(min, max\)"),
        ({"radius": ("0", "1")}, TypeError, r"`radius` should be a sequence \(min, max\)"),
        ({"top_k": 0}, ValueError, r"top_k should be an integer >= 1, but got 0 instead"),
        ({"top_k": True}, TypeError, r"top_k should be an integer >= 1, but got bool True"),
        ({"top_k": 2.0}, TypeError, r"top_k should be an integer >= 1, but got float 2.0"),
        ({"fill": "mean"}, ValueError, r"fill should be one of"),
        ({"p": 1.5}, ValueError, r"`p` should be in the interval \[0.0, 1.0\]"),
        ({"generator": 1}, TypeError, r"generator should be a torch.Generator"),
    ])
    def test_constructor_errors(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            RelevanceErasing3d(GraphPointNet(), **kwargs)

    @pytest.mark.parametrize("shape", [(10, 6), (2, 10, 6, 1)])
    def test_dense_not_3d(self, shape):
        with pytest.raises(ValueError, match=r"RelevanceErasing3d expects a batch of point clouds of shape "
                                             r"\(B, N, C\)"):
            RelevanceErasing3d(DensePointNet())(torch.randn(shape), torch.zeros(shape[0], dtype=torch.long))

    def test_remove_on_dense(self):
        with pytest.raises(ValueError, match="RelevanceErasing3d: fill='remove' needs PyG batches"):
            RelevanceErasing3d(DensePointNet(), fill="remove")(*make_points())

    def test_integer_points(self):
        with pytest.raises(TypeError, match="floating-point"):
            RelevanceErasing3d(DensePointNet())(torch.zeros(2, 10, 6, dtype=torch.long), torch.zeros(2).long())

    def test_labels_mismatch(self):
        with pytest.raises(ValueError, match=r"labels of shape \(3,\) do not match a batch of 4 clouds"):
            RelevanceErasing3d(GraphPointNet())(make_batch(), torch.tensor([0, 1, 2]))
        points, _ = make_points(batch_size=4)
        with pytest.raises(ValueError, match=r"labels of shape \(2,\) do not match a batch of 4 clouds"):
            RelevanceErasing3d(DensePointNet())(points, torch.tensor([0, 1]))

    def test_empty_cloud_and_missing_pos(self):
        datas = [Data(pos=torch.randn(5, 3), x=torch.randn(5, 2), y=torch.tensor([0])),
                 Data(pos=torch.zeros(0, 3), x=torch.zeros(0, 2), y=torch.tensor([1]))]
        with pytest.raises(ValueError, match=r"RelevanceErasing3d: cloud\(s\) \[1\] have no points"):
            RelevanceErasing3d(GraphPointNet())(Batch.from_data_list(datas))
        no_pos = Batch.from_data_list([Data(x=torch.randn(5, 3), y=torch.tensor([0]))])
        with pytest.raises(ValueError, match="expects point clouds with positions `pos`"):
            RelevanceErasing3d(GraphPointNet())(no_pos)
