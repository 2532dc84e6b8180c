"""Tests of RelevanceDropout3d, the RelDrop point mask for dense point batches and PyTorch Geometric batches.

Every mask is compared with an independent computation: the relevance from the public attribution functions,
summed over each point's channels, the mask rule per cloud (a Python loop over clouds for PyG input) with noise
drawn from a generator seeded like the transform's, and the "keep the least relevant point" rescue.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch_geometric.transforms as T
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform

import reldrop_transforms
from reldrop_transforms import RelevanceDropout2d, RelevanceDropout3d, RelevanceErasing2d, RelevanceErasing3d
from reldrop_transforms.attribution import relevance, relevance_graph
from reldrop_transforms.functional import keep_least_relevant, normalize_relevance, relevance_dropout_mask

from helpers import POINT_NUM_CLASSES as NUM_CLASSES
from helpers import (DensePointNet, GraphPointNet, assert_dense_points_zeroed, assert_same_state,
                     assert_setting_applies_from_the_next_call, snapshot)

SIZES = (5, 9, 12)

# -- tiny models: DensePointNet and GraphPointNet (warm BatchNorm1d) from tests/helpers.py ---------------------


class PosBatchNet(GraphPointNet):
    """A model with another call signature: forward(pos, batch) on tensors."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(in_channels=3, seed=seed)

    def forward(self, pos, batch):
        return self.head(self.aggr(self.point_features(pos), batch))


# -- data ----------------------------------------------------------------------------------------------------


def make_points(batch_size=4, num_points=10, channels=6, *, channels_first=False, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(batch_size, num_points, channels, generator=g, dtype=dtype)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (points.transpose(1, 2).contiguous() if channels_first else points), labels


def make_cloud(n, *, seed, features=2, edges=False):
    g = torch.Generator().manual_seed(seed)
    data = Data(pos=torch.randn(n, 3, generator=g), y=torch.tensor([seed % NUM_CLASSES]),
                point_label=torch.arange(n) + 100 * seed)
    if features:
        data.x = torch.randn(n, features, generator=g)
    if edges:
        data.edge_index = torch.randint(0, n, (2, 2 * n), generator=g)
        data.edge_attr = torch.randn(2 * n, 3, generator=g)
    return data


def make_batch(sizes=SIZES, *, seed=0, features=2, edges=False):
    return Batch.from_data_list([make_cloud(n, seed=seed + 10 * i, features=features, edges=edges)
                                 for i, n in enumerate(sizes)])


def seeded(seed):
    return torch.Generator().manual_seed(seed)


# -- independent references ----------------------------------------------------------------------------------


def reference_dense_mask(model, points, labels, *, alpha, beta, seed, channels_first=False):
    """relevance -> sum over channels -> mask rule (same generator) -> keep the least relevant point; p = 1."""
    rel = relevance(model, points, labels)
    per_point = rel.sum(1 if channels_first else 2)
    mask = relevance_dropout_mask(per_point, alpha, beta, generator=seeded(seed))
    return keep_least_relevant(mask, per_point), per_point


def graph_per_point(model, batch, labels, **kwargs):
    rels = relevance_graph(model, batch, labels, **kwargs)
    return sum(r.sum(1) for r in rels.values())


def reference_graph_mask(model, batch, labels, *, alpha, beta, seed, p=1.0, **kwargs):
    """The per-point relevance (sum over pos and x channels), then per cloud in a Python loop: min-max
    normalisation, the rule with the noise the transform draws (the coins when p < 1, then N values: the rule
    for p), the coin, and the rescue of the least relevant point of a fully dropped cloud."""
    per_point = graph_per_point(model, batch, labels, **kwargs)
    g = seeded(seed)
    coins = torch.ones(batch.num_graphs, dtype=torch.bool) if p >= 1 else (
        torch.rand(batch.num_graphs, generator=g) < p)
    noise = torch.rand(per_point.shape, generator=g, dtype=per_point.dtype)
    mask = torch.zeros(per_point.shape, dtype=torch.bool)
    for i in range(batch.num_graphs):
        lo, hi = int(batch.ptr[i]), int(batch.ptr[i + 1])
        r = per_point[lo:hi]
        span = r.max() - r.min()
        rn = torch.zeros_like(r) if span <= torch.finfo(r.dtype).eps * r.abs().max() else (r - r.min()) / span
        m = (alpha * noise[lo:hi] + (1 - alpha) * rn >= 1 - beta) & coins[i]
        if bool(m.all()):
            m[int((r == r.min()).nonzero()[0, 0])] = False
        mask[lo:hi] = m
    return mask, per_point


def expected_example(data, drop, fill):
    """One cloud after the transform, built by hand from the original example."""
    keep = ~drop
    if fill == "remove":
        out = Data()
        new_index = torch.full((data.num_nodes,), -1, dtype=torch.long)
        new_index[keep] = torch.arange(int(keep.sum()))
        for key, value in data.items():
            if key in ("pos", "x", "point_label"):
                out[key] = value[keep]
            elif key == "y":
                out[key] = value
        if "edge_index" in data:
            alive = keep[data.edge_index].all(0)
            out.edge_index = new_index[data.edge_index[:, alive]]
            out.edge_attr = data.edge_attr[alive]
        return out
    out = copy.copy(data)
    first = int(keep.nonzero()[0, 0])
    for key in ("pos", "x", "point_label"):
        if key not in data:
            continue
        value = data[key].clone()
        if fill == "first":
            value[drop] = data[key][first]
        elif value.is_floating_point():
            value[drop] = 0.0 if fill == "zero" else fill
        out[key] = value
    return out


def assert_examples(out, batch, mask, fill):
    assert isinstance(out, Batch) and out is not batch
    assert out.num_graphs == batch.num_graphs
    listed = out.to_data_list()
    for i in range(batch.num_graphs):
        original = batch.get_example(i)
        expected = expected_example(original, mask[batch.ptr[i]:batch.ptr[i + 1]], fill)
        for example in (out.get_example(i), listed[i]):
            assert sorted(example.keys()) == sorted(expected.keys())
            for key in expected.keys():
                assert torch.equal(example[key], expected[key]), (i, key)


def assert_batch_unchanged(batch, before):
    values, versions, slices = before
    for key, value in values.items():
        assert torch.equal(batch[key], value), key
        assert batch[key]._version == versions[key], key
    for key, value in slices.items():
        assert torch.equal(batch._slice_dict[key], value), key


def record(batch):
    values = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
    return ({k: v.clone() for k, v in values.items()}, {k: v._version for k, v in values.items()},
            {k: v.clone() for k, v in batch._slice_dict.items()})


def mid_training(model, call):
    """Existing .grad, a frozen parameter, a submodule in eval mode, the model in train mode."""
    model.train()
    call(model).sum().backward()
    model.lin1.weight.requires_grad_(False) if hasattr(model, "lin1") else model.conv1.weight.requires_grad_(False)
    next(m for m in model.modules() if isinstance(m, nn.ReLU)).eval()
    return model


class TestRelevanceDropout3d:
    # -- dense input -----------------------------------------------------------------------------------------

    @pytest.mark.parametrize("channels_first", [False, True])
    @pytest.mark.parametrize("alpha, beta, seed", [(0.5, 0.5, 0), (0.3, 0.6, 1), (0.0, 0.4, 2), (1.0, 0.3, 3)])
    def test_dense_mask_matches_reference(self, channels_first, alpha, beta, seed):
        model = DensePointNet(channels_first=channels_first)
        points, labels = make_points(channels_first=channels_first, seed=seed)
        t = RelevanceDropout3d(model, alpha=alpha, beta=beta, generator=seeded(seed), channels_first=channels_first)
        out, out_labels = t(points, labels)
        mask, _ = reference_dense_mask(model, points, labels, alpha=alpha, beta=beta, seed=seed,
                                       channels_first=channels_first)
        assert bool(mask.any()) and bool((~mask).any())  # not vacuous
        assert_dense_points_zeroed(out, out_labels, points, labels, mask, channels_first)

    @pytest.mark.parametrize("fill", ["zero", "first", -1.5])
    @pytest.mark.parametrize("channels_first", [False, True])
    def test_dense_output_keeps_the_input_layout(self, fill, channels_first):
        """A contiguous cloud comes back contiguous, whatever the fill (was: channels_first with fill='first' gave a
        transposed view, on which ``.view`` fails)."""
        model = DensePointNet(channels_first=channels_first)
        points, labels = make_points(channels_first=channels_first, seed=5)
        out, _ = RelevanceDropout3d(model, fill=fill, generator=seeded(5), channels_first=channels_first)(points, labels)
        assert not torch.equal(out, points)  # (something was dropped)
        assert out.is_contiguous() and out.stride() == points.stride()
        out.view(out.shape[0], -1)

    @pytest.mark.parametrize("fill", ["first", -1.5])
    @pytest.mark.parametrize("channels_first", [False, True])
    def test_dense_fills(self, fill, channels_first):
        model = DensePointNet(channels_first=channels_first)
        points, labels = make_points(channels_first=channels_first, seed=5)
        t = RelevanceDropout3d(model, fill=fill, generator=seeded(5), channels_first=channels_first)
        out, _ = t(points, labels)
        mask, _ = reference_dense_mask(model, points, labels, alpha=0.5, beta=0.5, seed=5,
                                       channels_first=channels_first)
        last = points.transpose(1, 2) if channels_first else points
        expected = last.clone()
        for b in range(points.shape[0]):
            first = int((~mask[b]).nonzero()[0, 0])
            expected[b, mask[b]] = last[b, first] if fill == "first" else fill
        assert torch.equal(out, expected.transpose(1, 2) if channels_first else expected)

    def test_dense_float64(self):
        model = DensePointNet().double()
        points, labels = make_points(dtype=torch.float64, seed=6)
        out = RelevanceDropout3d(model, generator=seeded(6))(points, labels)[0]
        mask, _ = reference_dense_mask(model, points, labels, alpha=0.5, beta=0.5, seed=6)
        assert out.dtype == torch.float64
        assert torch.equal(out[mask], torch.zeros_like(out[mask])) and torch.equal(out[~mask], points[~mask])

    def test_dense_p_half_matches_reference(self):
        model = DensePointNet()
        points, labels = make_points(batch_size=8, seed=7)
        out, _ = RelevanceDropout3d(model, p=0.5, generator=seeded(7))(points, labels)
        g = seeded(7)  # coins first, then the noise of the whole batch (the rule for p)
        index = (torch.rand(8, generator=g) < 0.5).nonzero().flatten()
        noise = torch.rand(8, 10, generator=g, dtype=points.dtype)
        assert 0 < index.numel() < 8
        per_point = relevance(model, points[index], labels[index]).sum(2)
        sub = keep_least_relevant(relevance_dropout_mask(per_point, 0.5, 0.5, noise=noise[index]), per_point)
        mask = torch.zeros(8, 10, dtype=torch.bool)
        mask[index] = sub
        assert torch.equal(out[mask], torch.zeros_like(out[mask])) and torch.equal(out[~mask], points[~mask])

    def test_dense_p_zero_returns_input(self):
        points, labels = make_points()
        sample = (points, labels)
        out = RelevanceDropout3d(DensePointNet(), p=0.0)(*sample)
        assert out[0] is points and out[1] is labels

    def test_dense_predicted_class_without_labels(self):
        model = DensePointNet()
        points, _ = make_points(seed=8)
        out = RelevanceDropout3d(model, labels_getter=None, generator=seeded(8))(points)
        mask, _ = reference_dense_mask(model, points, None, alpha=0.5, beta=0.5, seed=8)
        assert torch.equal(out[~mask], points[~mask]) and torch.equal(out[mask], torch.zeros_like(out[mask]))

    def test_dense_never_empties_a_cloud(self):
        # alpha = beta = 1: the rule drops every point; exactly the least relevant point of each cloud survives.
        model = DensePointNet()
        points, labels = make_points(seed=9)
        out, _ = RelevanceDropout3d(model, alpha=1.0, beta=1.0, generator=seeded(9))(points, labels)
        per_point = relevance(model, points, labels).sum(2)
        kept = (out != 0).any(2)
        assert torch.equal(kept.sum(1), torch.ones(points.shape[0], dtype=torch.long))
        assert torch.equal(kept.float().argmax(1), per_point.argmin(1))
        rows = torch.arange(points.shape[0])
        assert torch.equal(out[rows, per_point.argmin(1)], points[rows, per_point.argmin(1)])

    def test_dense_input_not_modified_and_model_state(self):
        model = DensePointNet()
        points, labels = make_points(seed=10)
        mid_training(model, lambda m: m(points))
        before, copy_, version = snapshot(model), points.clone(), points._version
        RelevanceDropout3d(model, generator=seeded(10))(points, labels)
        assert torch.equal(points, copy_) and points._version == version
        assert_same_state(before, model)
        assert model.training

    # -- PyG input -------------------------------------------------------------------------------------------

    def test_is_a_pyg_base_transform(self):
        t = RelevanceDropout3d(GraphPointNet())
        assert isinstance(t, BaseTransform)
        assert reldrop_transforms.RelevanceDropout3d is RelevanceDropout3d
        assert "RelevanceDropout3d(" in repr(t)

    @pytest.mark.parametrize("cls", [RelevanceDropout2d, RelevanceDropout3d], ids=lambda cls: cls.__name__)
    def test_repr_names_the_attribution_settings(self, cls):
        # dtype and cuda_graphs were left out of the repr
        plain = repr(cls(nn.Linear(2, 2)))
        assert "composite='epsilon_flat'" in plain and "backend='auto'" in plain
        assert "dtype" not in plain and "cuda_graphs" not in plain
        text = repr(cls(nn.Linear(2, 2), dtype=torch.bfloat16, cuda_graphs=True, backend="fast"))
        assert "dtype=torch.bfloat16" in text and "cuda_graphs=True" in text and "backend='fast'" in text

    @pytest.mark.parametrize("cls", [RelevanceDropout2d, RelevanceErasing2d, RelevanceDropout3d, RelevanceErasing3d],
                             ids=lambda cls: cls.__name__)
    def test_repr_quotes_strings_and_shows_none(self, cls):
        # the 2D transforms wrote labels_getter=default (torchvision's repr leaves strings unquoted), and a None getter
        # (the predicted class) was left out
        assert "labels_getter='default'" in repr(cls(nn.Linear(2, 2)))
        assert "labels_getter=None" in repr(cls(nn.Linear(2, 2), labels_getter=None))

        def second(sample):
            return sample[1]

        assert "labels_getter=" + second.__qualname__ in repr(cls(nn.Linear(2, 2), labels_getter=second))

    @pytest.mark.parametrize("cls", [RelevanceDropout2d, RelevanceErasing2d, RelevanceDropout3d, RelevanceErasing3d],
                             ids=lambda cls: cls.__name__)
    @pytest.mark.parametrize("name, value", [("composite", "epsilon_plus_flat"), ("epsilon", 0.1), ("backend", "fast"),
                                             ("dtype", torch.bfloat16), ("cuda_graphs", True)])
    def test_attribution_settings_say_they_are_fixed(self, cls, name, value):
        # Python's own "property 'epsilon' of 'RelevanceDropout2d' object has no setter"
        t = cls(nn.Linear(2, 2))
        before = getattr(t, name)
        with pytest.raises(AttributeError, match=rf"{cls.__name__}.{name} is fixed at construction .* build a new "
                                                 rf"transform, {cls.__name__}\(model, {name}=\.\.\., \.\.\.\)"):
            setattr(t, name, value)
        assert getattr(t, name) == before

    @pytest.mark.parametrize("cls", [RelevanceDropout2d, RelevanceErasing2d, RelevanceDropout3d, RelevanceErasing3d],
                             ids=lambda cls: cls.__name__)
    def test_repr_shows_a_generator_where_one_is_set(self, cls):
        # generator=None was shown without one, and nothing with one: a seeded transform read as unseeded
        assert "generator=None" in repr(cls(nn.Linear(2, 2)))
        seeded = repr(cls(nn.Linear(2, 2), generator=torch.Generator().manual_seed(0)))
        assert "generator=torch.Generator(device='cpu')" in seeded and "generator=None" not in seeded

    @pytest.mark.parametrize("fill", ["remove", "zero", "first", 2.5])
    @pytest.mark.parametrize("features", [2, 0])
    def test_pyg_mask_matches_reference(self, fill, features):
        model = GraphPointNet(in_channels=3 + features)
        batch = make_batch(seed=1, features=features, edges=True)
        before = record(batch)
        out = RelevanceDropout3d(model, fill=fill, generator=seeded(11))(batch)
        mask, per_point = reference_graph_mask(model, batch, batch.y, alpha=0.5, beta=0.5, seed=11)
        assert bool(mask.any()) and bool((~mask).any())
        rels = relevance_graph(model, batch, batch.y)
        assert set(rels) == ({"pos", "x"} if features else {"pos"})  # pos and x are both attributed
        assert_examples(out, batch, mask, fill)
        assert_batch_unchanged(batch, before)
        if fill == "remove":
            sizes = torch.tensor([int((~mask[batch.ptr[i]:batch.ptr[i + 1]]).sum()) for i in range(3)])
            assert torch.equal(out.ptr, torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]))
            assert torch.equal(out.batch, torch.arange(3).repeat_interleave(sizes))
        else:
            assert torch.equal(out.batch, batch.batch) and torch.equal(out.ptr, batch.ptr)

    def test_pyg_relevance_sums_pos_and_x(self):
        # With the paper's composite the first layer (on cat([pos, x])) gets the Flat rule, which spreads a point's
        # relevance evenly over its input channels: pos and x relevance are then proportional per point and the
        # normalised mask cannot tell whether x was summed. A composite without Flat makes the sum observable.
        model = GraphPointNet()
        batch = make_batch(seed=2)
        flat = relevance_graph(model, batch, batch.y)
        torch.testing.assert_close(flat["pos"].sum(1) * 2, flat["x"].sum(1) * 3)
        rels = relevance_graph(model, batch, batch.y, composite="epsilon_plus")
        both = rels["pos"].sum(1) + rels["x"].sum(1)
        rn = normalize_relevance(both, batch=batch.batch, num_segments=3)
        pos_only = normalize_relevance(rels["pos"].sum(1), batch=batch.batch, num_segments=3)
        gap = (rn - pos_only).abs()
        assert gap.max() > 0.1
        i = int(gap.argmax())  # a threshold between the two: the masks differ at point i
        beta = 1.0 - float(rn[i] + pos_only[i]) / 2
        out = RelevanceDropout3d(model, alpha=0.0, beta=beta, fill="remove", composite="epsilon_plus")(batch)
        expected = keep_least_relevant(rn >= 1.0 - beta, both, batch=batch.batch, num_segments=3)
        assert bool(expected[i]) != bool(pos_only[i] >= 1.0 - beta)
        assert_examples(out, batch, expected, "remove")

    def test_pyg_labels_from_call_and_getter(self):
        model = GraphPointNet()
        batch = make_batch(seed=3)
        other = (batch.y + 1) % NUM_CLASSES
        out, out_labels = RelevanceDropout3d(model, fill="remove", generator=seeded(12))(batch, other)
        assert out_labels is other
        mask, _ = reference_graph_mask(model, batch, other, alpha=0.5, beta=0.5, seed=12)
        assert_examples(out, batch, mask, "remove")
        by_y, _ = reference_graph_mask(model, batch, batch.y, alpha=0.5, beta=0.5, seed=12)
        assert not torch.equal(mask, by_y)  # the labels really were used

        getter = RelevanceDropout3d(model, fill="remove", generator=seeded(12), labels_getter=lambda b: other)
        assert_examples(getter(batch), batch, mask, "remove")

        predicted = RelevanceDropout3d(model, fill="remove", generator=seeded(13), labels_getter=None)
        batch_no_y = copy.copy(batch)
        del batch_no_y.y
        out = predicted(batch_no_y)
        mask, _ = reference_graph_mask(model, batch_no_y, None, alpha=0.5, beta=0.5, seed=13)
        assert_examples(out, batch_no_y, mask, "remove")

    def test_pyg_labels_getter_set_after_construction(self):
        # setting labels_getter after construction was ignored (None still read data.y, a callable never ran)
        model = GraphPointNet()
        batch = make_batch(seed=3)
        other = (batch.y + 1) % NUM_CLASSES
        mask, _ = reference_graph_mask(model, batch, other, alpha=0.5, beta=0.5, seed=12)
        later = RelevanceDropout3d(model, fill="remove", generator=seeded(12))
        later.labels_getter = lambda b: other
        assert_examples(later(batch), batch, mask, "remove")
        later = RelevanceDropout3d(model, fill="remove", generator=seeded(13))
        later.labels_getter = None
        batch.y = torch.full_like(batch.y, 99)  # out of range: must not be read
        mask, _ = reference_graph_mask(model, batch, None, alpha=0.5, beta=0.5, seed=13)
        assert_examples(later(batch), batch, mask, "remove")

    @pytest.mark.parametrize("layout", ["dense", "pyg"])
    @pytest.mark.parametrize("p", [1.0, 0.0])
    def test_fill_that_overflows_the_dtype(self, layout, p):
        # fill=1e5 became inf in float16 points (the next call refused them as input); the same whatever the coins,
        # and before any draw (on PyG batches it came after the coins, the noise and the attribution)
        model = GraphPointNet().half()
        generator = seeded(0)
        state = generator.get_state()
        t = RelevanceDropout3d(model, p=p, fill=1e5, generator=generator)
        with pytest.raises(ValueError, match=r"fill.* 100000.0 is not finite in torch.float16"):
            if layout == "dense":
                t(*make_points(channels=5, dtype=torch.float16))
            else:
                batch = make_batch()
                batch.pos, batch.x = batch.pos.half(), batch.x.half()
                t(batch)
        assert torch.equal(generator.get_state(), state)

    @pytest.mark.parametrize("fill", ["zero", "remove"])
    @pytest.mark.parametrize("p", [1.0, 0.0])
    def test_batches_built_by_hand(self, fill, p):
        # a Batch built by hand without ptr failed with an AttributeError from inside; a Data whose batch vector names
        # several clouds ran as one cloud (batching it overwrote the vector: one logit row, one normalisation for
        # all) with fill="zero", and raised from inside PyG with fill="remove". Now a ValueError saying what to pass,
        # whatever the coins; a hand-built Batch with ptr (no collation bookkeeping) works as the collated one
        model = GraphPointNet()
        collated = make_batch()
        pos, x, vector = collated.pos, collated.x, collated.batch
        t = RelevanceDropout3d(model, p=p, fill=fill, labels_getter=None, generator=seeded(0))
        with pytest.raises(ValueError, match=r"expects a collated Batch .* has no `ptr`"):
            t(Batch(pos=pos, x=x, batch=vector))
        with pytest.raises(ValueError, match=r"expects `pos` of shape \(N, D\), but got \(3, 4, 3\). Dense clouds"):
            t(Batch(pos=torch.randn(3, 4, 3), y=torch.zeros(3, 1)))  # (as PyG's DenseDataLoader batches)
        with pytest.raises(ValueError, match=r"takes a Data as one cloud, but this Data has a `batch` vector naming 3"):
            t(Data(pos=pos, x=x, batch=vector))
        alone = Data(pos=pos[:5], x=x[:5])
        one = t(Data(pos=pos[:5], x=x[:5], batch=torch.zeros(5, dtype=torch.int32)))  # one cloud: as without it
        expected = RelevanceDropout3d(model, p=p, fill=fill, labels_getter=None, generator=seeded(0))(alone)
        assert torch.equal(one.pos, expected.pos) and torch.equal(one.x, expected.x)
        assert one.batch.dtype == torch.int32 and torch.equal(one.batch, torch.zeros(one.pos.shape[0], dtype=torch.int32))
        by_hand = Batch(pos=pos, x=x, batch=vector, ptr=collated.ptr)
        out = RelevanceDropout3d(model, p=p, fill=fill, labels_getter=None, generator=seeded(0))(by_hand)
        expected = RelevanceDropout3d(model, p=p, fill=fill, labels_getter=None, generator=seeded(0))(collated)
        for key in ("pos", "x", "batch", "ptr"):
            assert torch.equal(out[key], expected[key]), key

    @pytest.mark.parametrize("cls", [RelevanceDropout3d, RelevanceErasing3d], ids=lambda cls: cls.__name__)
    @pytest.mark.parametrize("layout", ["dense", "pyg"])
    @pytest.mark.parametrize("p", [1.0, 0.5, 0.0])
    def test_settings_set_after_construction(self, cls, layout, p):
        # alpha, beta (dropout), radius, top_k (erasing) set later were checked only inside the mask kernel:
        # accepted at p = 0 or when no coin came up, raised after a whole attribution otherwise. Now as at
        # construction, before any coin (the generator does not move), whatever p and the coins
        model = DensePointNet() if layout == "dense" else GraphPointNet()

        def call(t):
            return t(*make_points()) if layout == "dense" else t(make_batch())

        bad = ({"alpha": (-0.1, ValueError), "beta": (2.0, ValueError), "p": (1.5, ValueError)}
               if cls is RelevanceDropout3d else
               {"radius": ((0.3, 0.1), ValueError), "top_k": (0, ValueError), "p": (-1.0, ValueError)})
        # keys and forward_fn too, also on dense batches, which read neither (found by a peer probe: accepted there)
        bad.update(keys=("pos", TypeError), forward_fn=(5, TypeError))
        for name, (value, error) in bad.items():
            t = cls(model, p=p, generator=seeded(0))
            setattr(t, name, value)
            state = t.generator.get_state()
            with pytest.raises(error, match=f"`?{name}`? should"):
                call(t)
            assert torch.equal(t.generator.get_state(), state)
        good = {"alpha": 0.7, "beta": 0.2} if cls is RelevanceDropout3d else {"radius": [0.2, 0.4], "top_k": 2}
        expected = call(cls(model, p=p, generator=seeded(0), **good))
        later = cls(model, p=p, generator=seeded(0))
        for name, value in good.items():
            setattr(later, name, value)
        out = call(later)
        if layout == "dense":
            assert torch.equal(out[0], expected[0])
        else:
            assert torch.equal(out.pos, expected.pos) and torch.equal(out.x, expected.x)

    @pytest.mark.parametrize("cls", [RelevanceDropout3d, RelevanceErasing3d], ids=lambda cls: cls.__name__)
    @pytest.mark.parametrize("p", [1.0, 0.0])
    def test_channels_first_and_generator_set_after_construction(self, cls, p):
        # `t.channels_first = "False"` was accepted (a non-empty string counts as true: (B, N, C) points were read as
        # (B, C, N), whole coordinate channels filled); `t.generator = 5` raised only where a number was drawn. Now
        # refused as at construction, whatever p
        model = DensePointNet()
        t = cls(model, p=p, generator=seeded(0))
        t.channels_first = "False"
        with pytest.raises(TypeError, match="channels_first should be a bool, but got str"):
            t(*make_points())
        t.channels_first = False
        t.generator = 5
        with pytest.raises(TypeError, match="generator should be a torch.Generator or None, but got int"):
            t(*make_points())

    @pytest.mark.parametrize("layout", ["dense", "pyg"])
    @pytest.mark.parametrize("p", [1.0, 0.0])
    def test_fill_set_after_construction(self, layout, p):
        # a fill set after construction was not checked at call time: "zeros" reached fill_points (its own message,
        # only when a coin came up), 1e5 in float16 was not refused; now as at construction, whatever the coins
        model = DensePointNet() if layout == "dense" else GraphPointNet()
        t = RelevanceDropout3d(model, p=p, generator=seeded(0))

        def call():
            if layout == "dense":
                return t(*make_points())
            return t(make_batch())

        t.fill = "zeros"
        with pytest.raises(ValueError, match=r"fill should be one of .* or a number, but got 'zeros'"):
            call()
        t.fill = float("nan")
        with pytest.raises(ValueError, match="fill"):
            call()
        model.half()
        t.fill = 1e5
        with pytest.raises(ValueError, match=r"fill.* 100000.0 is not finite in torch.float16"):
            if layout == "dense":
                t(*make_points(dtype=torch.float16))
            else:
                batch = make_batch()
                batch.pos, batch.x = batch.pos.half(), batch.x.half()
                t(batch)
        model.float()
        t.fill = 0.25  # a valid one set later is used
        if layout == "dense":
            points, labels = make_points()
            out, _ = t(points, labels)
            if p == 1.0:
                dropped = (out != points).any(-1)
                assert bool(dropped.any()) and torch.equal(out[dropped], torch.full_like(out[dropped], 0.25))
            else:
                assert torch.equal(out, points)
        else:
            batch = make_batch()
            out = t(batch)
            if p == 1.0:
                dropped = (out.pos != batch.pos).any(-1)
                assert bool(dropped.any()) and torch.equal(out.pos[dropped], torch.full_like(out.pos[dropped], 0.25))
            else:
                assert torch.equal(out.pos, batch.pos)

    def test_pyg_single_data_in_compose(self):
        model = GraphPointNet()
        data = make_cloud(11, seed=4, edges=True)
        pipeline = T.Compose([RelevanceDropout3d(model, fill="remove", generator=seeded(14)), T.Center()])
        out = pipeline(data)
        assert isinstance(out, Data) and not isinstance(out, Batch)
        one = Batch.from_data_list([data])
        mask, _ = reference_graph_mask(model, one, one.y, alpha=0.5, beta=0.5, seed=14)
        assert bool(mask.any()) and bool((~mask).any())
        expected = expected_example(data, mask, "remove")
        assert out.num_nodes == int((~mask).sum())
        torch.testing.assert_close(out.pos, expected.pos - expected.pos.mean(0, keepdim=True))
        for key in ("x", "point_label", "y", "edge_index", "edge_attr"):
            assert torch.equal(out[key], expected[key]), key
        assert data.num_nodes == 11

    @pytest.mark.parametrize("fill", ["remove", "zero", "first"])
    def test_pyg_single_data_keeps_shapes_and_dtypes(self, fill):
        # a single Data comes back as a Data like the input: the same attributes, shapes and dtypes except the
        # dropped points (a 0-dim y stays 0-dim), so that transformed and untransformed samples collate together
        model = GraphPointNet()
        data = make_cloud(10, seed=6, edges=True)
        data.y = torch.tensor(2)
        data.weight = torch.tensor(0.5, dtype=torch.float64)
        data.name = "cloud"
        data.num_nodes = 10  # explicit, as Data(pos=..., num_nodes=10)
        out = RelevanceDropout3d(model, fill=fill, generator=seeded(20))(data)
        assert type(out) is type(data)
        assert sorted(out.keys()) == sorted(data.keys())
        assert out.num_nodes == out.pos.shape[0]
        assert out.num_nodes < 10 if fill == "remove" else out.num_nodes == 10
        for key, value in data.items():
            if not isinstance(value, torch.Tensor):
                assert key == "num_nodes" or out[key] == value, key
                continue
            assert out[key].dtype == value.dtype, key
            if fill == "remove" and (data.is_node_attr(key) or data.is_edge_attr(key)):  # fewer along cat dim
                dim = data.__cat_dim__(key, value) % value.ndim
                assert out[key].shape[:dim] + out[key].shape[dim + 1:] == value.shape[:dim] + value.shape[dim + 1:]
            else:
                assert out[key].shape == value.shape, key
        for key in ("y", "weight", "name"):
            assert out[key] is data[key], key  # graph-level leaves: the input's own objects
        collated = Batch.from_data_list([out, data])
        assert collated.y.shape == (2,) and collated.num_nodes == out.num_nodes + 10
        assert data.num_nodes == 10 and data.y.shape == ()

    @pytest.mark.parametrize("getter", ["default", None])
    @pytest.mark.parametrize("as_args", [False, True])
    def test_a_list_of_data_is_refused(self, getter, as_args):
        # PyG's DataListLoader yields lists of Data: only the first cloud was masked (labels_getter=None), or the
        # second was taken for the labels ("the labels should be a torch.Tensor, but got Data"; found by a peer
        # probe)
        clouds = [make_cloud(n, seed=i) for i, n in enumerate(SIZES)]
        t = RelevanceDropout3d(GraphPointNet(), labels_getter=getter, generator=seeded(0))
        with pytest.raises(ValueError, match=r"got a (list|tuple) of 3 PyG Data objects .*DataListLoader.*"
                                             r"Batch.from_data_list\(clouds\)"):
            t(*clouds) if as_args else t(clouds)

    @pytest.mark.parametrize("cls", [RelevanceDropout3d, RelevanceErasing3d])
    @pytest.mark.parametrize("p", [1.0, 0.0])
    def test_forward_fn_on_a_dense_batch_is_refused(self, cls, p):
        # forward_fn was silently not called on a dense batch: model(points) ran instead (found by a peer probe)
        calls = []

        def forward_fn(model, points):
            calls.append(points)
            return model(points)

        generator = seeded(0)
        state = generator.get_state()
        with pytest.raises(ValueError, match=r"forward_fn adapts the call of PyG models.*a dense batch is fed to the "
                                             r"model itself"):
            cls(DensePointNet(), p=p, forward_fn=forward_fn, generator=generator)(*make_points())
        assert not calls and torch.equal(generator.get_state(), state)

    def test_pyg_forward_fn(self):
        model = PosBatchNet()
        batch = make_batch(seed=5, features=0)
        forward_fn = lambda m, b: m(b.pos, b.batch)  # noqa: E731
        out = RelevanceDropout3d(model, fill="remove", forward_fn=forward_fn, generator=seeded(15))(batch)
        mask, _ = reference_graph_mask(model, batch, batch.y, alpha=0.5, beta=0.5, seed=15, forward_fn=forward_fn)
        assert bool(mask.any()) and bool((~mask).any())
        assert_examples(out, batch, mask, "remove")
        with pytest.raises(TypeError):  # without forward_fn the model is called as model(batch)
            RelevanceDropout3d(model)(batch)

    @pytest.mark.parametrize("cls", [RelevanceDropout3d, RelevanceErasing3d], ids=lambda cls: cls.__name__)
    def test_dict_samples_as_tuples(self, cls):
        """A dict sample, as the 2D transforms take it: the points are the first tensor (or Data/Batch) other than the
        labels, the labels under "labels" (or a labels_getter), a PyG batch's y where the dict has none; the other
        entries come back as they were (was: "expects a dense batch (B, N, C) or a torch_geometric Data/Batch, but
        got dict", also with a labels_getter)."""
        points, labels = make_points()
        expected = cls(DensePointNet(), generator=seeded(0))(points, labels)[0]
        meta = torch.arange(4)
        for sample, getter in (({"labels": labels, "points": points, "meta": meta}, "default"),
                               ({"points": points, "target": labels, "meta": meta}, lambda s: s["target"])):
            out = cls(DensePointNet(), generator=seeded(0), labels_getter=getter)(sample)
            assert type(out) is dict and list(out) == list(sample)
            assert torch.equal(out["points"], expected)
            assert all(out[key] is sample[key] for key in sample if key != "points")
        assert torch.equal(cls(DensePointNet(), generator=seeded(0))({"points": points}, labels)[0]["points"],
                           expected)
        batch = make_batch(seed=3)
        expected_pyg = cls(GraphPointNet(), generator=seeded(1))(batch)
        for sample in ({"cloud": batch}, {"cloud": batch, "labels": batch.y}):
            out = cls(GraphPointNet(), generator=seeded(1))(sample)["cloud"]
            assert torch.equal(out.pos, expected_pyg.pos) and torch.equal(out.x, expected_pyg.x)
        with pytest.raises(TypeError, match=r"expects a dict sample to hold the points .* under a key other than the "
                                            r"labels', but got keys \['labels', 'name'\]"):
            cls(DensePointNet())({"labels": labels, "name": "x"})

    def test_per_point_labels_say_what_to_pass(self):
        # per-point labels (segmentation) got "labels of shape (26,) do not match a batch of 3 clouds" (PyG) and
        # "soft labels should have shape (B, K) = (4, 4)" (dense), without the labels_getter hint
        batch = make_batch(seed=6)
        per_point = batch.clone()
        per_point.y = per_point.point_label.long()
        with pytest.raises(ValueError, match=r"labels have one entry per point \(shape \(26,\) for 26 points in 3 "
                           r"clouds\), as for segmentation.*labels_getter=None"):
            RelevanceDropout3d(GraphPointNet())(per_point)
        RelevanceDropout3d(GraphPointNet(), labels_getter=None)(per_point)  # the predicted class: works
        points, labels = make_points(batch_size=4, num_points=10)
        for channels_first in (False, True):
            cloud = points.transpose(1, 2).contiguous() if channels_first else points
            with pytest.raises(ValueError, match=r"labels have one class per point \(shape \(4, 10\) for 4 clouds "
                               r"of 10 points\).*labels_getter=None"):
                RelevanceDropout3d(DensePointNet(), channels_first=channels_first)(cloud, labels[:, None].repeat(1, 10))
        one_hot = nn.functional.one_hot(labels, NUM_CLASSES)  # integer one-hot rows are soft labels, as before
        assert torch.equal(RelevanceDropout3d(DensePointNet(), generator=seeded(0))(points[:, :4], one_hot)[0],
                           RelevanceDropout3d(DensePointNet(), generator=seeded(0))(points[:, :4], labels)[0])

    @pytest.mark.parametrize("channels_first", [False, True])
    def test_a_single_dense_cloud_is_told_to_add_the_batch_dimension(self, channels_first):
        points, labels = make_points(batch_size=1, channels_first=channels_first)
        layout = r"\(C, N\)" if channels_first else r"\(N, C\)"
        with pytest.raises(ValueError, match=rf"A single cloud {layout} has no batch dimension.*points\[None\]"):
            RelevanceDropout3d(DensePointNet(), channels_first=channels_first)(points[0], labels[0])

    def test_a_forward_that_does_not_take_the_batch_says_to_pass_forward_fn(self):
        class TwoArguments(GraphPointNet):
            def forward(self, pos, batch):
                return super().forward(Batch(pos=pos, batch=batch, ptr=None))

        model, batch = TwoArguments(), make_batch(seed=6)
        with pytest.raises(TypeError, match=r"without forward_fn the model is called as model\(data\), but "
                           r"TwoArguments.forward\(pos, batch\) does not take one DataBatch .*missing 1 required"):
            RelevanceDropout3d(model)(batch)
        with pytest.raises(TypeError, match="forward_fn=lambda model, data"):
            relevance_graph(model, batch, batch.y)

    def test_pyg_p_zero_leaves_everything(self):
        batch = make_batch(seed=6, edges=True)
        for fill in ("remove", "zero"):
            out = RelevanceDropout3d(GraphPointNet(), p=0.0, fill=fill)(batch)
            assert_examples(out, batch, torch.zeros(batch.num_nodes, dtype=torch.bool), fill)

    def test_pyg_p_half_matches_reference(self):
        model = GraphPointNet()
        batch = make_batch(sizes=(6, 7, 5, 8, 9, 6), seed=7)
        out = RelevanceDropout3d(model, p=0.5, fill="remove", generator=seeded(16))(batch)
        mask, _ = reference_graph_mask(model, batch, batch.y, alpha=0.5, beta=0.5, seed=16, p=0.5)
        assert_examples(out, batch, mask, "remove")

    @pytest.mark.parametrize("cls", [RelevanceDropout3d, RelevanceErasing3d], ids=lambda cls: cls.__name__)
    @pytest.mark.parametrize("fill", ["remove", "zero"])
    def test_pyg_p_below_one_attributes_the_selected_clouds_alone(self, cls, fill):
        # Every cloud of a PyG batch was attributed whatever the coins (p = 0.5 paid p = 1's attribution); the
        # model now runs on a batch of the selected clouds alone, and the output is the one of attributing all
        model = GraphPointNet()
        batch = make_batch(sizes=(6, 7, 5, 8, 9, 6, 7, 5), seed=7)
        seen = []
        model.register_forward_pre_hook(lambda module, args: seen.append(args[0].num_graphs))
        kwargs = {} if cls is RelevanceDropout3d else {"radius": (0.3, 0.5)}
        out = cls(model, p=0.5, fill=fill, generator=seeded(21), **kwargs)(batch)
        selected = int((torch.rand(batch.num_graphs, generator=seeded(21)) < 0.5).sum())  # the coins come first
        assert 2 <= selected < batch.num_graphs and seen == [selected]
        # every cloud attributed, the coins applied after: the path of a CUDA graph (forced here, run eagerly)
        cuda_graph_like = cls(model, p=0.5, fill=fill, generator=seeded(21), **kwargs)
        seen.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(cuda_graph_like._attributor), "graphs_apply", lambda self, pos: True)
            patch.setattr(type(cuda_graph_like._attributor), "then_graph",
                          lambda self, data, targets, post, post_inputs, **kw: tuple(post(
                              self.attribute_graph(data, targets, keys=kw["keys"], forward_fn=kw["forward_fn"],
                                                   caller=kw["caller"], checked=True), *post_inputs)))
            every = cuda_graph_like(batch)
        assert seen == [batch.num_graphs]
        for key in ("pos", "x", "batch", "ptr"):
            torch.testing.assert_close(out[key], every[key], rtol=0, atol=0)

    def test_pyg_p_per_cloud_statistics(self):
        # alpha = 0, beta = 1 drops all but one point of every selected cloud: count the selected clouds.
        model = GraphPointNet()
        batch = make_batch(sizes=(4,) * 300, seed=8)
        out = RelevanceDropout3d(model, alpha=0.0, beta=1.0, p=0.3, fill="remove", generator=seeded(17))(batch)
        sizes = out.ptr[1:] - out.ptr[:-1]
        assert set(sizes.tolist()) == {1, 4}  # per cloud: all or nothing
        assert abs(float((sizes == 1).float().mean()) - 0.3) < 0.1  # sd 0.026

    def test_pyg_never_empties_a_cloud(self):
        model = GraphPointNet()
        batch = make_batch(seed=9)
        per_point = graph_per_point(model, batch, batch.y)
        out = RelevanceDropout3d(model, alpha=1.0, beta=1.0, fill="remove", generator=seeded(18))(batch)
        assert torch.equal(out.ptr, torch.arange(4))
        for i in range(3):
            lo, hi = int(batch.ptr[i]), int(batch.ptr[i + 1])
            least = lo + int(per_point[lo:hi].argmin())
            assert torch.equal(out.get_example(i).pos, batch.pos[least:least + 1])
            assert torch.equal(out.get_example(i).x, batch.x[least:least + 1])
        zero = RelevanceDropout3d(model, alpha=1.0, beta=1.0, fill="zero", generator=seeded(18))(batch)
        survivors = (zero.pos != 0).any(1)
        assert torch.equal(survivors.nonzero().flatten(),
                           torch.stack([int(batch.ptr[i]) + per_point[batch.ptr[i]:batch.ptr[i + 1]].argmin()
                                        for i in range(3)]))

    def test_pyg_input_not_modified_and_model_state(self):
        model = GraphPointNet()
        batch = make_batch(seed=10, edges=True)
        mid_training(model, lambda m: m(batch))
        before, recorded = snapshot(model), record(batch)
        for fill in ("remove", "zero", "first"):
            RelevanceDropout3d(model, fill=fill, generator=seeded(19))(batch)
            assert_same_state(before, model)
            assert_batch_unchanged(batch, recorded)
        assert model.training

    @pytest.mark.parametrize("cls", [RelevanceDropout3d, RelevanceErasing3d])
    @pytest.mark.parametrize("pyg", [False, True])
    def test_namedtuple_samples_keep_their_type(self, cls, pyg):
        # type(sample)([out, *rest]) raised "Sample.__new__() missing 1 required positional argument" (whenever a
        # coin came up: with p < 1, depending on the draw)
        from collections import namedtuple

        Sample = namedtuple("Sample", ["points", "label"])
        if pyg:
            model, batch = GraphPointNet(), make_batch()
            points, labels = batch, batch.y
        else:
            model = DensePointNet()
            points, labels = make_points()
        t = cls(model, p=1.0, generator=seeded(0))
        out = t(Sample(points, labels))
        expected = cls(model, p=1.0, generator=seeded(0))(points, labels)
        assert type(out) is Sample and out.label is labels
        if pyg:
            assert torch.equal(out.points.pos, expected[0].pos)
        else:
            assert torch.equal(out.points, expected[0]) and not torch.equal(out.points, points)

    @pytest.mark.parametrize("fill", ["zero", "first", "remove"])
    def test_pyg_output_has_bookkeeping_of_its_own(self, fill):
        # the output Batch shared the input's _slice_dict / _inc_dict objects (fill zero / first): a later transform
        # editing them in place edited the input's
        batch = make_batch(edges=True)
        slices, incs = dict(batch._slice_dict), dict(batch._inc_dict)
        out = RelevanceDropout3d(GraphPointNet(in_channels=5), p=1.0, fill=fill, generator=seeded(0))(batch)
        assert out._slice_dict is not batch._slice_dict and out._inc_dict is not batch._inc_dict
        out._slice_dict["pos"] = None
        out._inc_dict.clear()
        assert batch._slice_dict == slices and batch._inc_dict == incs
        assert [d.num_nodes for d in batch.to_data_list()] == list(SIZES)

    def test_pickle_round_trip(self):
        t = RelevanceDropout3d(GraphPointNet(), fill="remove", generator=seeded(0))
        clone = pickle.loads(pickle.dumps(t))
        batch = make_batch(seed=11)
        assert_examples(clone(batch), batch, reference_graph_mask(clone.model, batch, batch.y, alpha=0.5, beta=0.5,
                                                                  seed=0)[0], "remove")

    @pytest.mark.parametrize("cls", [RelevanceDropout3d, RelevanceErasing3d])
    def test_deepcopy_holds_a_copy_until_the_model_is_rebound(self, cls):
        model = GraphPointNet()
        batch = make_batch(seed=12)
        rebound = copy.deepcopy(cls(model, generator=seeded(21)))  # as a transform restored from a checkpoint
        assert rebound.model is not model
        stale = copy.deepcopy(rebound)
        rebound.model = model
        assert rebound.model is model
        with torch.no_grad():  # training goes on: the masks follow the model's new weights
            for param in model.parameters():
                param.copy_(torch.randn(param.shape, generator=seeded(22)))
        expected = cls(model, generator=seeded(21))(batch)
        assert torch.equal(rebound(batch).pos, expected.pos)
        assert not torch.equal(stale(batch).pos, expected.pos)
        with pytest.raises(TypeError, match=r"model should be a torch.nn.Module, but got str"):
            rebound.model = "model.pt"

    # -- errors ----------------------------------------------------------------------------------------------

    @pytest.mark.parametrize("shape", [(10, 6), (2, 10, 6, 1), (6,)])
    def test_dense_not_3d(self, shape):
        with pytest.raises(ValueError, match=r"expects a batch of point clouds of shape \(B, N, C\)"):
            RelevanceDropout3d(DensePointNet())(torch.randn(shape), torch.zeros(shape[0], dtype=torch.long))

    def test_dense_channels_first_message(self):
        with pytest.raises(ValueError, match=r"shape \(B, C, N\)"):
            RelevanceDropout3d(DensePointNet(), channels_first=True)(torch.randn(6, 10), torch.zeros(6).long())

    @pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
    def test_integer_points(self, dtype):
        points = torch.zeros(2, 10, 6, dtype=dtype)
        with pytest.raises(TypeError, match=r"expects floating-point inputs, but got dtype .* points with \.float\(\)"):
            RelevanceDropout3d(DensePointNet())(points, torch.zeros(2, dtype=torch.long))

    def test_integer_pos(self):
        batch = make_batch(features=0)
        batch.pos = batch.pos.long()
        with pytest.raises(TypeError, match="floating-point"):
            RelevanceDropout3d(GraphPointNet(in_channels=3))(batch)

    def test_missing_pos(self):
        batch = Batch.from_data_list([Data(x=torch.randn(5, 3), y=torch.tensor([0])) for _ in range(2)])
        with pytest.raises(ValueError, match="expects point clouds with positions `pos`"):
            RelevanceDropout3d(GraphPointNet())(batch)

    @pytest.mark.parametrize("batched", [False, True])
    def test_hetero_data(self, batched):
        from torch_geometric.data import HeteroData

        data = HeteroData()
        data["points"].pos = torch.randn(5, 3)
        data.y = torch.tensor([0])
        data = Batch.from_data_list([data, data]) if batched else data
        with pytest.raises(TypeError, match=r"expects homogeneous point clouds \(a torch_geometric Data or Batch\), "
                                            r"but got a HeteroData(Batch)?: attribute one node type"):
            RelevanceDropout3d(GraphPointNet())(data)  # (was: "... but the HeteroData has none", of `pos`)

    def test_labels_length_mismatch(self):
        batch = make_batch()
        with pytest.raises(ValueError, match=r"labels of shape \(2,\) do not match a batch of 3 clouds"):
            RelevanceDropout3d(GraphPointNet())(batch, torch.tensor([0, 1]))
        batch.y = torch.tensor([0, 1, 2, 3])
        with pytest.raises(ValueError, match=r"labels of shape \(4,\) do not match a batch of 3 clouds"):
            RelevanceDropout3d(GraphPointNet())(batch)
        points, _ = make_points(batch_size=4)
        with pytest.raises(ValueError, match=r"labels of shape \(3,\) do not match a batch of 4 clouds"):
            RelevanceDropout3d(DensePointNet())(points, torch.tensor([0, 1, 2]))

    def test_labels_not_found(self):
        batch = make_batch()
        del batch.y
        with pytest.raises(ValueError, match="could not find labels"):
            RelevanceDropout3d(GraphPointNet())(batch)
        with pytest.raises(ValueError, match="could not find labels"):
            RelevanceDropout3d(DensePointNet())(make_points()[0])

    def test_empty_cloud_in_batch(self):
        datas = [make_cloud(5, seed=0), Data(pos=torch.zeros(0, 3), x=torch.zeros(0, 2), y=torch.tensor([1]),
                                            point_label=torch.zeros(0, dtype=torch.long)), make_cloud(6, seed=1)]
        batch = Batch.from_data_list(datas)
        with pytest.raises(ValueError, match=r"cloud\(s\) \[1\] have no points"):
            RelevanceDropout3d(GraphPointNet(), fill="remove")(batch)

    def test_remove_on_dense(self):
        with pytest.raises(ValueError, match="fill='remove' needs PyG batches"):
            RelevanceDropout3d(DensePointNet(), fill="remove")(*make_points())

    @pytest.mark.parametrize("fill", ["mean", "", True, None, (0.0, 1.0)])
    def test_bad_fill(self, fill):
        with pytest.raises(ValueError, match="fill should be one of"):
            RelevanceDropout3d(GraphPointNet(), fill=fill)

    @pytest.mark.parametrize("fill", ["remove", "zero"])
    def test_follow_batch_bookkeeping(self, fill):
        """A loader's ``follow_batch`` adds ``x_batch``/``x_ptr`` (and ``face_batch``/``face_ptr``): they follow the
        points and faces kept, as a batch collated from the results would have them (was, with ``remove``:
        ``get_example`` and ``to_data_list`` raised ``KeyError: 'x_batch'``, and the ``_ptr`` were stale)."""
        datas = [make_cloud(n, seed=i) for i, n in enumerate(SIZES)]
        for data in datas:
            data.face = torch.randint(0, data.num_nodes, (3, 2 * data.num_nodes), generator=torch.Generator()
                                      .manual_seed(data.num_nodes))
        batch = Batch.from_data_list(datas, follow_batch=["x", "face"])
        out = RelevanceDropout3d(GraphPointNet(), p=1.0, fill=fill, generator=seeded(0))(batch)
        listed = out.to_data_list()
        assert [out.get_example(i).num_nodes for i in range(3)] == [d.num_nodes for d in listed]
        again = Batch.from_data_list(listed, follow_batch=["x", "face"])
        for key in ("x_batch", "x_ptr", "face_batch", "face_ptr", "batch", "ptr"):
            assert torch.equal(out[key], again[key]), key
        if fill == "remove":
            assert out.num_nodes < batch.num_nodes

    @pytest.mark.parametrize("fill", ["remove", "zero"])
    def test_graph_attribute_with_as_many_rows_as_nodes(self, fill):
        """A per-cloud (2, 3) bounding box whose rows add up to the batch's node count is a graph attribute (its
        slices are not those of ``pos``): left as it is (was: filtered or zeroed as if it had one row per node)."""
        datas = [make_cloud(n, seed=i, features=0) for i, n in enumerate((1, 3, 2))]
        for data in datas:
            data.bbox = torch.stack([data.pos.min(0).values, data.pos.max(0).values])
        batch = Batch.from_data_list(datas)
        assert batch.bbox.shape[0] == batch.num_nodes
        out = RelevanceDropout3d(GraphPointNet(in_channels=3), p=1.0, alpha=1.0, beta=0.9, fill=fill,
                                 generator=seeded(0))(batch)
        assert torch.equal(out.bbox, batch.bbox)
        assert all(out.get_example(i).bbox.shape == (2, 3) for i in range(3))

    @pytest.mark.parametrize("fill", ["zero", 1.5, "first", "remove"])
    def test_node_attribute_of_several_dimensions(self, fill):
        # a per-point (N, 2, 3) attribute (local frames) failed with fill="zero" or a number, for every p, with
        # "mask of shape (N,) does not match a batch of shape (N, 2, 3)"; it is filled or removed with its points
        datas = [make_cloud(n, seed=i) for i, n in enumerate(SIZES)]
        for i, data in enumerate(datas):
            data.frame = torch.randn(data.num_nodes, 2, 3, generator=seeded(50 + i))
        batch = Batch.from_data_list(datas)
        model = GraphPointNet()
        mask, _ = reference_graph_mask(model, batch, batch.y, alpha=0.5, beta=0.5, seed=4)
        out = RelevanceDropout3d(model, alpha=0.5, beta=0.5, fill=fill, generator=seeded(4))(batch)
        assert 0 < int(mask.sum()) < mask.numel()
        for i in range(batch.num_graphs):
            frame, drop = batch.get_example(i).frame, mask[batch.ptr[i]:batch.ptr[i + 1]]
            if fill == "remove":
                expected = frame[~drop]
            else:
                expected = frame.clone()
                expected[drop] = frame[int((~drop).nonzero()[0, 0])] if fill == "first" else \
                    (0.0 if fill == "zero" else fill)
            assert torch.equal(out.get_example(i).frame, expected), i

    def test_integer_features_suggest_leaving_them_out(self):
        # integer `x` (categories a model embeds) was told to convert them, which would break such a model; the
        # error says that keys=("pos",) leaves them out, before any draw
        batch = make_batch()
        batch.x = torch.randint(0, 4, (batch.num_nodes, 2))
        generator = seeded(0)
        state = generator.get_state()
        with pytest.raises(TypeError, match=r"`x` \(one of keys=\('pos', 'x'\)\) holds dtype torch.int64.*"
                                            r"keys=\('pos',\); if it holds features, convert it first"):
            RelevanceDropout3d(GraphPointNet(), p=0.5, generator=generator)(batch)
        assert torch.equal(generator.get_state(), state)
        out = RelevanceDropout3d(PosBatchNet(), keys=("pos",), fill="remove",
                                 forward_fn=lambda m, b: m(b.pos, b.batch))(batch)
        assert out.x.dtype == torch.int64 and out.x.shape[0] == out.pos.shape[0]

    def test_keys(self):
        with pytest.raises(TypeError, match=r"keys should be a sequence of attribute names such as \('pos', 'x'\), "
                                            r"but got 'pos'"):
            RelevanceDropout3d(GraphPointNet(), keys="pos")
        with pytest.raises(ValueError, match="keys should name at least one attribute"):
            RelevanceDropout3d(GraphPointNet(), keys=())
        batch = make_batch(features=0)
        with pytest.raises(ValueError, match=r"none of the keys \('x',\) names a tensor of the DataBatch, which has "
                                             r"\['batch', 'point_label', 'pos', 'ptr', 'y'\]"):
            RelevanceDropout3d(GraphPointNet(in_channels=3), keys=("x",))(batch)
        with pytest.raises(TypeError, match="keys should be a sequence"):
            relevance_graph(GraphPointNet(in_channels=3), batch, keys="pos")

    def test_channels_first_is_a_bool(self):
        with pytest.raises(TypeError, match="channels_first should be a bool, but got str"):
            RelevanceDropout3d(DensePointNet(), channels_first="False")

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_non_finite_pyg_inputs(self, bad):
        """Said as inputs, naming the cloud (was: "the relevance is not finite ... use epsilon > 0")."""
        batch = make_batch()
        batch.pos = batch.pos.clone()
        batch.pos[SIZES[0] + 2, 1] = bad
        for p in (0.3, 1.0):
            with pytest.raises(ValueError, match=r"RelevanceDropout3d: the inputs \(`pos`\) should be finite, but are "
                                                 r"not .* sample\(s\) \[1\] of the batch"):
                RelevanceDropout3d(GraphPointNet(), p=p, generator=seeded(0))(batch)

    @pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
    def test_points_the_model_cannot_take_whatever_the_coins(self, p):
        """Three channels for a six-channel model: the model's error for the whole batch, for every p and every draw
        (was: naming the clouds the coins selected; then the first two clouds where only some are attributed)."""
        points, labels = make_points(channels=3)
        for seed in range(4):
            with pytest.raises(RuntimeError, match=r"expected input\[4, 3, 10\] to have 6 channels"):
                RelevanceDropout3d(DensePointNet(), p=p, generator=seeded(seed))(points, labels)

    @pytest.mark.parametrize("fill", [float("nan"), float("inf")])
    def test_non_finite_fill(self, fill):
        """(The filled batch would be refused as input by the next call.)"""
        with pytest.raises(ValueError, match="fill should be a finite number, but got"):
            RelevanceDropout3d(GraphPointNet(), fill=fill)

    @pytest.mark.parametrize("name", ["alpha", "beta", "p"])
    @pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
    def test_probabilities_outside_unit_interval(self, name, bad):
        with pytest.raises(ValueError, match=rf"`{name}` should be in the interval \[0.0, 1.0\]"):
            RelevanceDropout3d(GraphPointNet(), **{name: bad})

    @pytest.mark.parametrize("head", ["3d", "1d"])
    def test_model_output_not_logits(self, head):
        class Bad(DensePointNet):
            def forward(self, points):
                logits = super().forward(points)
                return logits[:, :, None] if head == "3d" else logits[:, 0]

        with pytest.raises(ValueError, match=r"should return logits of shape \(B, K\)"):
            RelevanceDropout3d(Bad())(*make_points())

        class BadGraph(GraphPointNet):
            def forward(self, data):
                logits = super().forward(data)
                return logits[:, :, None] if head == "3d" else logits[:, 0]

        with pytest.raises(ValueError, match=r"should return logits of shape \(B, K\)"):
            RelevanceDropout3d(BadGraph())(make_batch())

    def test_not_points(self):
        with pytest.raises(TypeError, match="expects a dense batch"):
            RelevanceDropout3d(GraphPointNet())([1, 2, 3])


@pytest.mark.parametrize("layout", ["dense", "pyg"])
def test_a_setting_changed_in_another_thread_applies_from_the_next_call(layout):
    """``t.alpha`` set from another thread while a call is inside its attribution applies from the next call (it
    was read again after the draws: alpha = 0.3's noise from the global RNG where the call had drawn none)."""
    model = DensePointNet() if layout == "dense" else GraphPointNet()
    sample = make_points() if layout == "dense" else (make_batch(),)

    def make():
        return RelevanceDropout3d(model, p=1.0, alpha=0.0, generator=seeded(3))

    expected = make()(*sample)
    out = assert_setting_applies_from_the_next_call(make(), "alpha", 0.3, sample, next(model.children()))
    if layout == "dense":
        assert torch.equal(out[0], expected[0])
    else:
        assert torch.equal(out.pos, expected.pos) and torch.equal(out.x, expected.x)
