"""Point-cloud kernels against slow, obviously-correct per-cloud loops.

Grouped (PyG ``batch`` vector) normalisation and mask rule, ``keep_least_relevant``, ``fill_points`` and
``remove_points``. Each vectorised kernel is compared with a Python loop over the clouds that uses the dense
per-row kernels (tested in test_mask.py) or plain indexing.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch_geometric.data import Batch, Data

from reldrop_transforms.functional import (
    FILLS,
    fill_points,
    keep_least_relevant,
    normalize_relevance,
    relevance_dropout_mask,
    remove_points,
)

DTYPES = [torch.float32, torch.float64]


def grouped_relevance(sizes, *, seed=0, dtype=torch.float32, shuffle=False, flat_cloud=None):
    """Relevance (N,) and batch (N,) for clouds of the given sizes; optionally an unsorted batch vector and one
    cloud whose relevance is constant (flat)."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    rel = torch.randn(batch.shape[0], generator=g, dtype=dtype) * 3 + 1
    if flat_cloud is not None:
        rel[batch == flat_cloud] = 0.7
    if shuffle:
        perm = torch.randperm(batch.shape[0], generator=g)
        batch, rel = batch[perm], rel[perm]
    return rel, batch


def loop_normalize(rel, batch, num):
    out = torch.full_like(rel, float("nan"))
    for cloud in range(num):
        sel = batch == cloud
        out[sel] = normalize_relevance(rel[sel][None])[0]
    return out


def loop_mask(rel, batch, num, alpha, beta, noise):
    out = torch.zeros(rel.shape, dtype=torch.bool)
    for cloud in range(num):
        sel = batch == cloud
        out[sel] = relevance_dropout_mask(rel[sel][None], alpha, beta, noise=noise[sel][None])[0]
    return out


def loop_keep_least_relevant(mask, rel, batch, num):
    out = mask.clone()
    for cloud in range(num):
        idx = (batch == cloud).nonzero().flatten()
        if idx.numel() and bool(mask[idx].all()):
            r = rel[idx]
            first = idx[(r == r.min()).nonzero()[0, 0]]  # ties: the first index
            out[first] = False
    return out


def loop_fill(points, mask, fill, batch, num):
    out = points.clone()
    for cloud in range(num):
        idx = (batch == cloud).nonzero().flatten()
        for i in idx.tolist():
            if not mask[i]:
                continue
            if fill == "zero":
                out[i] = 0
            elif fill == "first":
                kept = idx[~mask[idx]]
                out[i] = points[kept[0]]
            else:
                out[i] = fill
    return out


class TestNormalizeRelevanceGrouped:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shuffle", [False, True])
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_matches_per_cloud_loop(self, dtype, shuffle, seed):
        rel, batch = grouped_relevance([5, 9, 1, 12], seed=seed, dtype=dtype, shuffle=shuffle, flat_cloud=1)
        out = normalize_relevance(rel, batch=batch, num_segments=4)
        expected = loop_normalize(rel, batch, 4)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert out.dtype == dtype and out.shape == rel.shape

    def test_explicit_formula_and_flat_cloud(self):
        rel, batch = grouped_relevance([6, 7, 5], seed=3, dtype=torch.float64, shuffle=True, flat_cloud=2)
        out = normalize_relevance(rel, batch=batch, num_segments=3)
        for cloud in range(3):
            r = rel[batch == cloud]
            if cloud == 2:  # flat: all zero, never NaN
                assert torch.equal(out[batch == cloud], torch.zeros_like(r))
            else:
                torch.testing.assert_close(out[batch == cloud], (r - r.min()) / (r.max() - r.min()))
                assert out[batch == cloud].min() == 0 and out[batch == cloud].max() == 1
        assert not torch.isnan(out).any()

    def test_single_point_cloud_is_flat(self):
        out = normalize_relevance(torch.tensor([3.0, 1.0, 2.0]), batch=torch.tensor([0, 1, 1]), num_segments=2)
        assert torch.equal(out, torch.tensor([0.0, 0.0, 1.0]))

    def test_num_segments_required(self):
        with pytest.raises(ValueError, match="num_segments is required"):
            normalize_relevance(torch.rand(4), batch=torch.zeros(4, dtype=torch.long))

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"relevance should have shape \(N,\) like batch"):
            normalize_relevance(torch.rand(4, 2), batch=torch.zeros(4, dtype=torch.long), num_segments=1)


class TestRelevanceDropoutMaskGrouped:
    @pytest.mark.parametrize("alpha, beta", [(0.5, 0.5), (0.3, 0.5), (0.0, 0.4), (1.0, 0.2), (0.7, 0.85)])
    @pytest.mark.parametrize("shuffle", [False, True])
    def test_matches_per_cloud_loop(self, alpha, beta, shuffle):
        rel, batch = grouped_relevance([8, 5, 12], seed=4, shuffle=shuffle, flat_cloud=1)
        noise = torch.rand(rel.shape, generator=torch.Generator().manual_seed(9))
        out = relevance_dropout_mask(rel, alpha, beta, noise=noise, batch=batch, num_segments=3)
        assert out.dtype == torch.bool
        assert torch.equal(out, loop_mask(rel, batch, 3, alpha, beta, noise))

    def test_generator_draws_the_same_noise(self):
        rel, batch = grouped_relevance([7, 6, 9], seed=5, shuffle=True)
        noise = torch.rand(rel.shape, generator=torch.Generator().manual_seed(11))
        by_noise = relevance_dropout_mask(rel, 0.5, 0.5, noise=noise, batch=batch, num_segments=3)
        by_generator = relevance_dropout_mask(rel, 0.5, 0.5, generator=torch.Generator().manual_seed(11),
                                              batch=batch, num_segments=3)
        assert torch.equal(by_noise, by_generator)

    def test_alpha_zero_threshold_per_cloud(self):
        rel, batch = grouped_relevance([10, 10], seed=6)
        rel[batch == 1] = rel[batch == 1] * 100 + 50  # another scale: normalisation is per cloud
        out = relevance_dropout_mask(rel, 0.0, 0.3, batch=batch, num_segments=2)
        rn = loop_normalize(rel, batch, 2)
        assert torch.equal(out, rn >= 0.7)

    def test_noise_shape_mismatch(self):
        with pytest.raises(ValueError, match="noise of shape"):
            relevance_dropout_mask(torch.rand(5), 0.5, 0.5, noise=torch.rand(4),
                                   batch=torch.zeros(5, dtype=torch.long), num_segments=1)

    def test_integer_noise(self):
        # integer noise was taken as is (every U = 0 or 1)
        with pytest.raises(TypeError, match="noise should hold U\\[0, 1\\) values in a floating-point tensor"):
            relevance_dropout_mask(torch.rand(5), 0.5, 0.5, noise=torch.ones(5, dtype=torch.long),
                                   batch=torch.zeros(5, dtype=torch.long), num_segments=1)
        with pytest.raises(TypeError, match="noise should hold"):
            relevance_dropout_mask(torch.rand(2, 5), 0.5, 0.5, noise=torch.zeros(2, 5, dtype=torch.bool))


class TestKeepLeastRelevant:
    def test_dense_matches_loop(self):
        g = torch.Generator().manual_seed(0)
        rel = torch.randn(5, 7, generator=g)
        mask = torch.rand(5, 7, generator=g) < 0.5
        mask[1] = True
        mask[3] = True
        out = keep_least_relevant(mask, rel)
        batch = torch.arange(5).repeat_interleave(7)
        expected = loop_keep_least_relevant(mask.reshape(-1), rel.reshape(-1), batch, 5).reshape(5, 7)
        assert torch.equal(out, expected)
        assert int((~out[1]).sum()) == 1 and not out[1, rel[1].argmin()]
        assert torch.equal(out[[0, 2, 4]], mask[[0, 2, 4]])  # clouds with a kept point are untouched
        assert not mask[1].logical_not().any()  # input not modified

    def test_dense_ties_keep_first_index(self):
        rel = torch.tensor([[2.0, 1.0, 3.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
        out = keep_least_relevant(torch.ones(2, 4, dtype=torch.bool), rel)
        assert torch.equal(out, torch.tensor([[True, False, True, True], [False, True, True, True]]))

    @pytest.mark.parametrize("shuffle", [False, True])
    def test_grouped_matches_loop(self, shuffle):
        rel, batch = grouped_relevance([6, 9, 1, 5, 8], seed=7, shuffle=shuffle, flat_cloud=3)
        mask = torch.rand(rel.shape, generator=torch.Generator().manual_seed(1)) < 0.4
        for cloud in (1, 2, 3):  # fully dropped clouds, one of them flat (all ties), one a single point
            mask[batch == cloud] = True
        out = keep_least_relevant(mask, rel, batch=batch, num_segments=5)
        assert torch.equal(out, loop_keep_least_relevant(mask, rel, batch, 5))
        for cloud in range(5):
            assert bool((~out[batch == cloud]).any())  # no cloud is emptied

    def test_grouped_ties_keep_first_index(self):
        batch = torch.tensor([1, 0, 1, 0, 1])
        rel = torch.tensor([0.2, 5.0, 0.2, 5.0, 0.9])
        out = keep_least_relevant(torch.ones(5, dtype=torch.bool), rel, batch=batch, num_segments=2)
        assert torch.equal(out, torch.tensor([False, False, True, True, True]))

    def test_nan_relevance_still_keeps_a_point(self):
        # "a cloud never loses all its points": with a NaN in a cloud's relevance the grouped form kept none (its
        # minimum was NaN, which equals nothing); both forms keep the first NaN point, as argmin does
        rel = torch.tensor([1.0, float("nan"), 2.0, float("nan"), 0.5, 3.0])
        mask = torch.ones(6, dtype=torch.bool)
        dense = keep_least_relevant(mask.reshape(2, 3), rel.reshape(2, 3))
        assert torch.equal(dense, torch.tensor([[True, False, True], [False, True, True]]))
        grouped = keep_least_relevant(mask, rel, batch=torch.arange(2).repeat_interleave(3), num_segments=2)
        assert torch.equal(grouped, dense.reshape(-1))

    def test_clouds_without_points(self):
        # (B, 0) gave torch's "argmin(): Expected reduction dim 1 to have non-zero size"
        out = keep_least_relevant(torch.zeros(2, 0, dtype=torch.bool), torch.zeros(2, 0))
        assert out.shape == (2, 0) and out.dtype == torch.bool

    def test_grouped_num_segments_required(self):
        with pytest.raises(ValueError, match="num_segments is required"):
            keep_least_relevant(torch.ones(3, dtype=torch.bool), torch.rand(3), batch=torch.zeros(3, dtype=torch.long))


class TestFillPoints:
    def test_first_in_a_cloud_without_kept_points(self):
        # "first" in a cloud whose points are all dropped copied the batch's last point, another cloud's (its
        # missing index was clamped to N - 1): zeros there, and each other cloud its own first kept point
        points = torch.arange(1.0, 10.0).reshape(3, 3, 1).repeat(1, 1, 2)  # cloud i: rows 3i+1 .. 3i+3
        mask = torch.tensor([[True, True, True], [True, False, False], [True, True, True]])
        expected = torch.zeros(3, 3, 2)
        expected[1] = torch.tensor([[5.0, 5.0], [5.0, 5.0], [6.0, 6.0]])
        assert torch.equal(fill_points(points, mask, "first"), expected)
        flat, batch = points.reshape(9, 2), torch.arange(3).repeat_interleave(3)
        out = fill_points(flat, mask.reshape(-1), "first", batch=batch, num_segments=3)  # PyG: (N, C) and (N,)
        assert torch.equal(out, expected.reshape(9, 2))
        out = fill_points(flat[:, 0], mask.reshape(-1), "first", batch=batch, num_segments=3)
        assert torch.equal(out, expected.reshape(9, 2)[:, 0])

    @pytest.mark.parametrize("fill", ["zero", "first", -2.5])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_dense_matches_loop(self, fill, dtype):
        g = torch.Generator().manual_seed(2)
        points = torch.randn(4, 6, 5, generator=g, dtype=dtype)
        mask = torch.rand(4, 6, generator=g) < 0.5
        mask[:, 3] = False  # every cloud keeps a point
        mask[2, :3] = True  # the first kept point is not the cloud's first point
        before = points.clone()
        out = fill_points(points, mask, fill)
        batch = torch.arange(4).repeat_interleave(6)
        expected = loop_fill(points.reshape(24, 5), mask.reshape(-1), fill, batch, 4).reshape(points.shape)
        assert torch.equal(out, expected)
        assert out.dtype == dtype
        assert torch.equal(points, before)
        if fill == "first":
            assert torch.equal(out[2, 0], points[2, 3])

    @pytest.mark.parametrize("fill", ["zero", "first", -2.5])
    @pytest.mark.parametrize("layout", ["transposed", "sliced", "contiguous"])
    def test_dense_keeps_the_layout_of_the_points(self, fill, layout):
        # "first" gave a contiguous result for a transposed view ((B, C, N) storage read as (B, N, C)), where the
        # other fills keep the input's layout: a caller's .view on the transposed-back result then failed
        g = torch.Generator().manual_seed(3)
        base = torch.randn(3, 5, 7, generator=g)
        points = {"transposed": base.transpose(1, 2), "sliced": base[:, :, 1:6], "contiguous": base}[layout]
        mask = torch.rand(points.shape[:2], generator=g) < 0.5
        mask[:, 4] = False  # every cloud keeps a point (the loop's case; zeros otherwise: tested above)
        out = fill_points(points, mask, fill)
        batch = torch.arange(points.shape[0]).repeat_interleave(points.shape[1])
        expected = loop_fill(points.reshape(-1, points.shape[2]), mask.reshape(-1), fill, batch,
                             points.shape[0]).reshape(points.shape)
        assert torch.equal(out, expected)
        assert out.stride() == torch.empty_like(points).stride()  # the layout torch's own elementwise ops give

    @pytest.mark.parametrize("fill", ["zero", "first", 4.0])
    @pytest.mark.parametrize("shuffle", [False, True])
    def test_grouped_matches_loop(self, fill, shuffle):
        rel, batch = grouped_relevance([5, 8, 11], seed=8, shuffle=shuffle)
        points = torch.randn(batch.shape[0], 3, generator=torch.Generator().manual_seed(3))
        mask = torch.rand(batch.shape, generator=torch.Generator().manual_seed(4)) < 0.5
        for cloud in range(3):  # every cloud keeps a point; its first one is dropped
            idx = (batch == cloud).nonzero().flatten()
            mask[idx[0]] = True
            mask[idx[-1]] = False
        out = fill_points(points, mask, fill, batch=batch, num_segments=3)
        assert torch.equal(out, loop_fill(points, mask, fill, batch, 3))

    @pytest.mark.parametrize("fill", ["zero", "first", 7.0])
    def test_grouped_attribute_without_channels(self, fill):
        batch = torch.tensor([0, 0, 0, 1, 1])
        values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
        mask = torch.tensor([True, False, True, False, True])
        out = fill_points(values, mask, fill, batch=batch, num_segments=2)
        assert torch.equal(out, loop_fill(values, mask, fill, batch, 2))

    @pytest.mark.parametrize("fill", ["zero", "first", 7.0])
    def test_grouped_attribute_of_several_dimensions(self, fill):
        # a per-point (N, a, b) attribute (local frames): "zero" and numbers failed with "mask of shape (N,) does
        # not match a batch of shape (N, a, b)"
        batch = torch.tensor([0, 0, 0, 1, 1])
        values = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(5))
        mask = torch.tensor([True, False, True, False, True])
        out = fill_points(values, mask, fill, batch=batch, num_segments=2)
        assert torch.equal(out, loop_fill(values, mask, fill, batch, 2))

    @pytest.mark.parametrize("fill", ["zero", "first", 7.0])
    def test_bad_mask_is_refused_by_every_fill(self, fill):
        # "first" gave torch's broadcasting error for a mask of the wrong shape and took a uint8 mask (with a
        # deprecation warning) where "zero" refused it
        points = torch.rand(1, 3, 2)
        with pytest.raises(ValueError, match=r"mask should have the shape of the points without their channels.*"
                                             r"\(1, 2\) for points of shape \(1, 3, 2\)"):
            fill_points(points, torch.tensor([[True, False]]), fill)
        with pytest.raises(TypeError, match="mask should be a bool tensor, but got torch.uint8"):
            fill_points(points, torch.tensor([[1, 0, 1]], dtype=torch.uint8), fill)
        with pytest.raises(TypeError, match="points should be a torch.Tensor"):
            fill_points(points.tolist(), torch.zeros(1, 3, dtype=torch.bool), fill)

    def test_first_without_batch_needs_dense_clouds(self):
        with pytest.raises(ValueError, match=r"fill='first' without batch takes dense clouds.*give batch"):
            fill_points(torch.rand(3, 2), torch.tensor([True, False, True]), "first")

    def test_bad_fill(self):
        with pytest.raises(ValueError, match="fill should be 'zero', 'first' or a number"):
            fill_points(torch.rand(1, 3, 3), torch.zeros(1, 3, dtype=torch.bool), "mean")

    def test_fills_constant(self):
        assert FILLS == ("zero", "first", "remove")


# -- remove_points ----------------------------------------------------------------------------------------------


def make_cloud(n, *, seed, with_faces=True):
    g = torch.Generator().manual_seed(seed)
    num_edges = 2 * n + 1
    data = Data(
        pos=torch.randn(n, 3, generator=g),
        x=torch.randn(n, 2, generator=g),
        point_label=torch.arange(n) + 100 * seed,  # per-node integer labels
        y=torch.tensor([seed % 3]),  # graph-level
        edge_index=torch.randint(0, n, (2, num_edges), generator=g),
        edge_attr=torch.randn(num_edges, 4, generator=g),
    )
    if with_faces:
        data.face = torch.randint(0, n, (3, n - 1), generator=g)
    return data


def filter_by_hand(data, keep):
    """The example with only its kept points: node attributes filtered, edges/faces with a removed node dropped
    and the survivors renumbered, edge attributes following their edges, graph attributes unchanged."""
    new_index = torch.full((data.num_nodes,), -1, dtype=torch.long)
    new_index[keep] = torch.arange(int(keep.sum()))
    out = Data()
    for key, value in data.items():
        if key in ("pos", "x", "point_label"):
            out[key] = value[keep]
        elif key == "y":
            out[key] = value
    alive = keep[data.edge_index].all(0)
    out.edge_index = new_index[data.edge_index[:, alive]]
    out.edge_attr = data.edge_attr[alive]
    if "face" in data:
        alive_faces = keep[data.face].all(0)
        out.face = new_index[data.face[:, alive_faces]]
    return out


def assert_same_data(actual, expected):
    assert sorted(actual.keys()) == sorted(expected.keys())
    for key in expected.keys():
        assert torch.equal(actual[key], expected[key]), key
    assert actual.num_nodes == expected.num_nodes


def clone_batch(batch):
    return {key: value.clone() for key, value in batch.items()}, copy.deepcopy(batch._slice_dict), \
        copy.deepcopy(batch._inc_dict)


class TestRemovePoints:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_examples_equal_filtering_by_hand(self, seed):
        datas = [make_cloud(n, seed=seed * 10 + i) for i, n in enumerate([5, 9, 12])]
        batch = Batch.from_data_list(datas)
        drop = torch.rand(batch.num_nodes, generator=torch.Generator().manual_seed(seed)) < 0.4
        drop[batch.ptr[1]] = True  # the first point of a later cloud: renumbering must use the new offsets
        state = clone_batch(batch)
        out = remove_points(batch, drop)

        assert isinstance(out, Batch) and out is not batch
        assert out.num_graphs == 3
        keeps = [~drop[batch.ptr[i]:batch.ptr[i + 1]] for i in range(3)]
        counts = torch.tensor([int(k.sum()) for k in keeps])
        assert torch.equal(out.ptr, torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]))
        assert torch.equal(out.batch, torch.arange(3).repeat_interleave(counts))
        assert out.num_nodes == int(counts.sum())
        examples = out.to_data_list()
        for i, (data, keep) in enumerate(zip(datas, keeps)):
            expected = filter_by_hand(data, keep)
            assert_same_data(out.get_example(i), expected)
            assert_same_data(examples[i], expected)
        # the batch-level tensors are the concatenation of the filtered examples
        assert_same_data(Batch.from_data_list(examples), Batch.from_data_list(
            [filter_by_hand(d, k) for d, k in zip(datas, keeps)]))

        values, slices, incs = state  # the input batch is unchanged
        for key, value in values.items():
            assert torch.equal(batch[key], value), key
        assert batch._slice_dict.keys() == slices.keys()
        for key in slices:
            assert torch.equal(batch._slice_dict[key], slices[key]), key
        for key in incs:
            assert torch.equal(torch.as_tensor(batch._inc_dict[key]), torch.as_tensor(incs[key])), key
        for i, data in enumerate(datas):
            assert_same_data(batch.get_example(i), data)

    def test_node_attribute_set_after_collation(self):
        # batch.feat = ... after collation: its rows were filtered and given slices but no increments, so that the
        # result's get_example / to_data_list / index_select raised KeyError('feat') (found by a peer probe). As
        # on the input, PyG's separate leaves it out of the examples
        datas = [make_cloud(n, seed=i) for i, n in enumerate([5, 8, 6])]
        batch = Batch.from_data_list(datas)
        batch.feat = batch.pos.norm(dim=1, keepdim=True)
        drop = torch.zeros(batch.num_nodes, dtype=torch.bool)
        drop[[0, 3, 6, 12, 18]] = True
        out = remove_points(batch, drop)
        assert torch.equal(out.feat, batch.feat[~drop])
        listed = out.to_data_list()
        for i, data in enumerate(datas):
            expected = filter_by_hand(data, ~drop[batch.ptr[i]:batch.ptr[i + 1]])
            assert_same_data(out.get_example(i), expected)
            assert_same_data(listed[i], expected)
        assert len(out.index_select([0, 2])) == 2

    def test_nothing_dropped_is_identity(self):
        datas = [make_cloud(n, seed=i) for i, n in enumerate([6, 7])]
        batch = Batch.from_data_list(datas)
        out = remove_points(batch, torch.zeros(batch.num_nodes, dtype=torch.bool))
        for i, data in enumerate(datas):
            assert_same_data(out.get_example(i), data)

    def test_without_edges(self):
        datas = [Data(pos=torch.randn(n, 3), x=torch.randn(n, 4), y=torch.tensor([i])) for i, n in enumerate([5, 8, 6])]
        batch = Batch.from_data_list(datas)
        drop = torch.zeros(batch.num_nodes, dtype=torch.bool)
        drop[[0, 2, 6, 7, 12]] = True
        out = remove_points(batch, drop)
        for i, data in enumerate(datas):
            keep = ~drop[batch.ptr[i]:batch.ptr[i + 1]]
            example = out.get_example(i)
            assert torch.equal(example.pos, data.pos[keep])
            assert torch.equal(example.x, data.x[keep])
            assert torch.equal(example.y, data.y)

    def test_single_cloud_batch_with_edges(self):
        # One graph: PyG's increments are all zero, but edge_index still counts nodes and must be renumbered.
        data = make_cloud(8, seed=3)
        batch = Batch.from_data_list([data])
        drop = torch.zeros(8, dtype=torch.bool)
        drop[[0, 3, 4]] = True
        out = remove_points(batch, drop)
        assert_same_data(out.get_example(0), filter_by_hand(data, ~drop))

    def test_edge_and_face_counts_coincide(self):
        # edge_attr must follow edge_index, not another index attribute with as many columns (face).
        datas = []
        for i, n in enumerate([6, 7]):
            data = make_cloud(n, seed=20 + i, with_faces=False)
            data.face = torch.randint(0, n, (3, data.edge_index.shape[1]), generator=torch.Generator().manual_seed(i))
            datas.append(data)
        batch = Batch.from_data_list(datas)
        drop = torch.zeros(batch.num_nodes, dtype=torch.bool)
        drop[[1, 4, 7, 8]] = True
        out = remove_points(batch, drop)
        for i, data in enumerate(datas):
            assert_same_data(out.get_example(i), filter_by_hand(data, ~drop[batch.ptr[i]:batch.ptr[i + 1]]))

    def test_explicit_num_nodes_follows_the_survivors(self):
        # Data(num_nodes=...) stores the count: the batch, get_example and to_data_list must not keep the old one.
        one = Batch.from_data_list([Data(pos=torch.randn(9, 3), num_nodes=9)])
        drop = torch.zeros(9, dtype=torch.bool)
        drop[[1, 2, 3]] = True
        out = remove_points(one, drop)
        assert out.num_nodes == out.pos.shape[0] == 6
        assert out.get_example(0).num_nodes == 6
        batch = Batch.from_data_list([Data(pos=torch.randn(n, 3), num_nodes=n) for n in (6, 8)])
        drop = torch.ones(14, dtype=torch.bool)
        drop[[0, 6]] = False
        out = remove_points(batch, drop)
        assert out.num_nodes == out.pos.shape[0] == 2
        assert [data.num_nodes for data in out.to_data_list()] == [1, 1]
        assert [out.get_example(i).num_nodes for i in range(2)] == [1, 1]
        assert batch.num_nodes == 14 and [data.num_nodes for data in batch.to_data_list()] == [6, 8]  # unchanged

    def test_as_many_faces_as_nodes(self):
        # F == N makes PyG's is_node_attr guess that face is a node attribute: it is an index all the same.
        g = torch.Generator().manual_seed(5)
        datas = []
        for n in (5, 6):
            data = make_cloud(n, seed=30 + n, with_faces=False)
            data.face = torch.randint(0, n, (3, n), generator=g)
            datas.append(data)
        batch = Batch.from_data_list(datas)
        assert batch.is_node_attr("face")
        drop = torch.zeros(batch.num_nodes, dtype=torch.bool)
        drop[[1, 7, 9]] = True
        out = remove_points(batch, drop)
        examples = out.to_data_list()
        for i, data in enumerate(datas):
            expected = filter_by_hand(data, ~drop[batch.ptr[i]:batch.ptr[i + 1]])
            assert_same_data(out.get_example(i), expected)
            assert_same_data(examples[i], expected)

    def test_one_dimensional_and_row_wise_index_attributes(self):
        # a 1-D index (a per-cloud keypoint list; PyG increments every key holding "index" by the node count) lost
        # all its entries as soon as any point was dropped (its survival was reduced to one bool), and to_data_list
        # then raised; a row-wise (E, 2) pair list (concatenated along dim 0, a Data subclass's __cat_dim__) keeps
        # the pairs whose nodes both survive. Compared with filtering each cloud by hand
        class Pairs(Data):
            def __cat_dim__(self, key, value, *args, **kwargs):
                return 0 if key == "pair_index" else super().__cat_dim__(key, value, *args, **kwargs)

        g = torch.Generator().manual_seed(7)
        datas = []
        for n in (6, 5, 8):
            data = Pairs(pos=torch.randn(n, 3, generator=g), keypoint_index=torch.randperm(n, generator=g)[:3],
                         pair_index=torch.randint(0, n, (4, 2), generator=g))
            datas.append(data)
        batch = Batch.from_data_list(datas)
        drop = torch.zeros(batch.num_nodes, dtype=torch.bool)
        drop[[int(datas[0].keypoint_index[0]), 6 + int(datas[1].pair_index[0, 1]), 12, 13]] = True
        out = remove_points(batch, drop)
        examples = out.to_data_list()
        for i, data in enumerate(datas):
            keep = ~drop[batch.ptr[i]:batch.ptr[i + 1]]
            new_index = keep.long().cumsum(0) - 1
            keypoints = data.keypoint_index[keep[data.keypoint_index]]
            pairs = data.pair_index[keep[data.pair_index].all(1)]
            for example in (examples[i], out.get_example(i)):
                assert torch.equal(example.pos, data.pos[keep])
                assert torch.equal(example.keypoint_index, new_index[keypoints])
                assert torch.equal(example.pair_index, new_index[pairs])
        assert 0 < out.keypoint_index.numel() < batch.keypoint_index.numel()  # some, not all, entries dropped

    def test_index_attributes_without_entries(self):
        # clouds without edges (an empty radius graph) and an empty keypoint list: nothing to filter, the batch
        # still loses its points (a change to entries along the concatenation dimension once raised here)
        datas = [Data(pos=torch.randn(n, 3), edge_index=torch.zeros(2, 0, dtype=torch.long),
                      keypoint_index=torch.zeros(0, dtype=torch.long)) for n in (4, 5)]
        batch = Batch.from_data_list(datas)
        drop = torch.zeros(batch.num_nodes, dtype=torch.bool)
        drop[[0, 6]] = True
        out = remove_points(batch, drop)
        assert out.edge_index.shape == (2, 0) and out.keypoint_index.shape == (0,)
        assert [d.pos.shape[0] for d in out.to_data_list()] == [3, 4]
        assert [d.edge_index.shape for d in out.to_data_list()] == [(2, 0), (2, 0)]

    def test_index_set_on_the_batch_after_collation(self):
        # an edge_index built on the collated batch (batch.edge_index = knn_graph(batch.pos, k, batch.batch), PyG's
        # KNNGraph applied to the Batch) has no increments of its own: it was left as it was, pointing past the
        # remaining nodes and at shifted ones, and its edge_attr unfiltered. Now filtered and renumbered by PyG's
        # convention for "index" keys; compared with filtering the batch as one graph by hand
        g = torch.Generator().manual_seed(3)
        batch = Batch.from_data_list([Data(pos=torch.randn(n, 3, generator=g), y=torch.tensor([0])) for n in (7, 9)])
        within = batch.batch[:, None] == batch.batch[None]
        edge_index = within.nonzero().t()[:, ::3].contiguous()  # pairs inside each cloud
        batch.edge_index = edge_index
        batch.edge_attr = torch.randn(edge_index.shape[1], 2, generator=g)
        drop = torch.zeros(batch.num_nodes, dtype=torch.bool)
        drop[[1, 4, 8, 12]] = True
        out = remove_points(batch, drop)
        keep = ~drop
        new_index = keep.long().cumsum(0) - 1
        alive = keep[edge_index].all(0)
        assert 0 < int(alive.sum()) < alive.numel()
        assert torch.equal(out.edge_index, new_index[edge_index[:, alive]])
        assert torch.equal(out.edge_attr, batch.edge_attr[alive])
        out.validate()
        assert torch.equal(batch.edge_index, edge_index)  # the input is unchanged
        assert [d.pos.shape[0] for d in out.to_data_list()] == [5, 7]  # (the key has no slices, as in the input)

    def test_integer_node_attribute_with_increments_is_filtered(self):
        # a per-node integer attribute that PyG increments by something other than the node count (here its
        # max + 1, as for keys containing "batch") is a node attribute, not an index
        datas = [make_cloud(n, seed=40 + n) for n in (5, 7)]
        for data in datas:
            data.sub_batch = torch.arange(data.num_nodes) % 2
        batch = Batch.from_data_list(datas)
        drop = torch.zeros(batch.num_nodes, dtype=torch.bool)
        drop[[0, 6, 8]] = True
        out = remove_points(batch, drop)
        for i, data in enumerate(datas):
            keep = ~drop[batch.ptr[i]:batch.ptr[i + 1]]
            assert torch.equal(out.get_example(i).sub_batch, data.sub_batch[keep])
