"""relevance_graph: LRP of PyTorch Geometric point-cloud models with respect to pos and x.

The fast engine is checked against zennit in float64 on a PointNet-like model; PyG's own Linear/MLP layers
against the same computation rebuilt from torch.nn layers; MeanAggregation's Norm rule by conservation.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MLP
from torch_geometric.nn import Linear as PygLinear
from torch_geometric.nn.aggr import MaxAggregation, MeanAggregation

from reldrop_transforms.attribution import relevance, relevance_graph

from helpers import warm_batchnorm

NUM_CLASSES = 4


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def node_input(data):
    return data.pos if getattr(data, "x", None) is None else torch.cat([data.pos, data.x], dim=-1)


def stab(z, eps):
    return z + eps * ((z >= 0).to(z.dtype) * 2 - 1)


def lrp_by_hand(model, batch, labels, *, epsilon):
    """The paper's composite on the bias-free PointNetLike with MeanAggregation, written out: Flat on lin1,
    Pass on ReLU, Epsilon on lin2 and the head, Norm (stabiliser 1e-6) on the per-cloud mean."""
    w1, w2, w3 = model.lin1.weight, model.lin2.weight, model.head.weight
    with torch.no_grad():
        h0 = torch.cat([batch.pos, batch.x], 1)
        z1 = h0 @ w1.T
        a1 = z1.clamp(min=0)
        z2 = a1 @ w2.T
        a2 = z2.clamp(min=0)
        counts = torch.bincount(batch.batch).to(a2.dtype)
        mean = torch.zeros(batch.num_graphs, a2.shape[1], dtype=a2.dtype).index_add_(0, batch.batch, a2)
        mean = mean / counts[:, None]
        z3 = mean @ w3.T
        r_z3 = nn.functional.one_hot(labels, NUM_CLASSES).to(z3.dtype) if labels.ndim == 1 else labels
        r_mean = mean * ((r_z3 / stab(z3, epsilon)) @ w3)
        r_a2 = a2 / counts[batch.batch, None] * (r_mean / stab(mean, 1e-6))[batch.batch]
        r_a1 = a1 * ((r_a2 / stab(z2, epsilon)) @ w2)  # Pass: R_z2 = R_a2
        flat = r_a1.sum(1, keepdim=True) / stab(torch.tensor(float(h0.shape[1]), dtype=h0.dtype), 1e-6)
        return flat.expand_as(h0)


class PointNetLike(nn.Module):
    """nn.Linear/BatchNorm1d/ReLU on cat([pos, x]), MaxAggregation over ``batch``, nn.Linear head."""

    def __init__(self, in_channels=5, seed=0, aggr=None, bias=True, batch_norm=True):
        super().__init__()
        torch.manual_seed(seed)
        self.lin1 = nn.Linear(in_channels, 16, bias=bias)
        self.bn1 = nn.BatchNorm1d(16) if batch_norm else nn.Identity()
        self.relu1 = nn.ReLU()
        self.lin2 = nn.Linear(16, 24, bias=bias)
        self.relu2 = nn.ReLU()
        self.aggr = MaxAggregation() if aggr is None else aggr
        self.head = nn.Linear(24, NUM_CLASSES, bias=bias)
        if batch_norm:
            warm_batchnorm(self.bn1, seed)

    def forward(self, data):
        h = self.relu2(self.lin2(self.relu1(self.bn1(self.lin1(node_input(data))))))
        return self.head(self.aggr(h, data.batch, dim_size=data.num_graphs))


class PygMLPNet(nn.Module):
    """torch_geometric.nn.MLP (children: act, lins, norms) and a torch_geometric.nn.Linear head."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mlp = MLP([5, 16, 24], norm="batch_norm")
        self.act = nn.ReLU()
        self.aggr = MaxAggregation()
        self.head = PygLinear(24, NUM_CLASSES)
        warm_batchnorm(self.mlp.norms[0].module, seed)

    def forward(self, data):
        h = self.act(self.mlp(node_input(data)))
        return self.head(self.aggr(h, data.batch, dim_size=data.num_graphs))


def rebuilt(pyg: PygMLPNet) -> PointNetLike:
    """The same computation with torch.nn layers in execution order and copied weights."""
    model = PointNetLike()
    with torch.no_grad():
        for target, source in ((model.lin1, pyg.mlp.lins[0]), (model.lin2, pyg.mlp.lins[1]),
                               (model.head, pyg.head)):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
        model.bn1.load_state_dict(pyg.mlp.norms[0].module.state_dict())
    return model.to(next(pyg.parameters()).dtype)


def make_batch(sizes=(5, 9, 12), *, seed=0, features=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    datas = []
    for i, n in enumerate(sizes):
        data = Data(pos=torch.randn(n, 3, generator=g, dtype=dtype), y=torch.tensor([(seed + i) % NUM_CLASSES]))
        if features:
            data.x = torch.randn(n, features, generator=g, dtype=dtype)
        datas.append(data)
    return Batch.from_data_list(datas)


class TestRelevanceGraph:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("features", [2, 0])
    def test_fast_matches_zennit_float64(self, seed, features):
        model = PointNetLike(in_channels=3 + features, seed=seed).double()
        batch = make_batch(seed=seed, features=features)
        fast = relevance_graph(model, batch, batch.y, backend="fast")
        ref = relevance_graph(model, batch, batch.y, backend="zennit")
        assert set(fast) == set(ref) == ({"pos", "x"} if features else {"pos"})
        for key in ref:
            assert fast[key].shape == batch[key].shape and fast[key].dtype == torch.float64
            assert ref[key].abs().sum() > 0
            assert rel_l2(fast[key], ref[key]) <= 1e-9, key

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    def test_relevance_has_memory_of_its_own(self, backend):
        # Flat on a first Linear spreads one column over every input feature: a broadcast view used to come back
        model = PointNetLike(in_channels=5).double()
        batch = make_batch(features=2)
        rels = relevance_graph(model, batch, batch.y, backend=backend)
        for key, rel in rels.items():
            assert rel.stride() == batch[key].stride(), key
            expected = rel.clone()
            rel.add_(1)
            assert torch.equal(rel, expected + 1), key

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    @pytest.mark.parametrize("keys", [("pos", "x"), ("pos",)])
    def test_a_forward_may_change_the_batch_in_place(self, backend, keys):
        # only the attributed keys were copies: a forward centring another attribute (or x, when only pos is
        # attributed) in place changed the caller's batch
        class Centring(nn.Module):
            def __init__(self, in_place):
                super().__init__()
                self.in_place = in_place
                self.net = PointNetLike(in_channels=5).double()

            def forward(self, data):
                if self.in_place:
                    data.normal.sub_(1.0)
                    data.x.mul_(2.0)
                    data.batch.add_(0)
                    normal, x = data.normal, data.x
                else:
                    normal, x = data.normal - 1.0, data.x * 2.0
                return self.net(Batch(pos=data.pos + normal, x=x, batch=data.batch, ptr=data.ptr))

        torch.manual_seed(0)
        model = Centring(True)
        twin = copy.deepcopy(model)
        twin.in_place = False
        batch = make_batch(features=2)
        batch.normal = torch.rand(batch.pos.shape, dtype=torch.float64) + 1.0
        names = batch.keys()  # (iterating a Batch gives its items)
        before = {key: batch[key].clone() for key in names if isinstance(batch[key], torch.Tensor)}
        rels = relevance_graph(model, batch, batch.y, keys=keys, backend=backend)
        expected = relevance_graph(twin, batch, batch.y, keys=keys, backend=backend)
        for key, value in before.items():
            assert torch.equal(batch[key], value), key
        assert set(rels) == set(keys)
        for key in keys:
            assert rels[key].abs().sum() > 0
            torch.testing.assert_close(rels[key], expected[key], rtol=1e-9, atol=1e-15)

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    def test_a_forward_may_change_tensors_held_in_lists_and_dicts_of_the_batch(self, backend):
        # the copies for the forward were of tensor attributes only: a forward changing a tensor held in a list or
        # dict attribute in place (here: shifts of its own) changed the caller's batch
        class Shifting(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = PointNetLike(in_channels=5).double()

            def forward(self, data):
                shift = data.shifts[0].add_(1.0) + data.extra["scale"].mul_(2.0)
                return self.net(Batch(pos=data.pos + shift, x=data.x, batch=data.batch, ptr=data.ptr))

        torch.manual_seed(0)
        model = Shifting()
        batch = make_batch(features=2)
        batch.shifts = [torch.full((3,), 0.5, dtype=torch.float64), "a label"]
        batch.extra = {"scale": torch.full((3,), 0.25, dtype=torch.float64), "name": "cloud"}
        kept = (batch.shifts, batch.shifts[0], batch.extra, batch.extra["scale"])
        rels = relevance_graph(model, batch, batch.y, backend=backend)
        assert all(now is then for now, then in zip((batch.shifts, batch.shifts[0], batch.extra, batch.extra["scale"]),
                                                    kept))  # the caller's objects themselves, unchanged
        assert torch.equal(batch.shifts[0], torch.full((3,), 0.5, dtype=torch.float64))
        assert torch.equal(batch.extra["scale"], torch.full((3,), 0.25, dtype=torch.float64))
        assert batch.shifts[1] == "a label" and batch.extra["name"] == "cloud"
        # the forward saw the values it would see on a batch of its own
        twin = copy.deepcopy(model)
        own = copy.copy(batch)
        own.shifts = [batch.shifts[0].clone(), "a label"]
        own.extra = {"scale": batch.extra["scale"].clone(), "name": "cloud"}
        expected = relevance_graph(twin, own, batch.y, backend=backend)
        for key in rels:
            torch.testing.assert_close(rels[key], expected[key], rtol=1e-9, atol=1e-15)

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    def test_containers_of_classes_of_their_own_are_left_as_they_are(self, backend):
        # the copies for the forward rebuilt every container attribute: a tuple subclass with a __new__(cls, a, b), a
        # read-only Mapping, a namedtuple subclass setting an attribute in __new__ and a dict subclass whose __init__
        # takes a name first crashed (TypeError, AttributeError) or reached the forward emptied (KeyError)
        import collections
        from collections.abc import Mapping

        class Pair(tuple):
            def __new__(cls, a, b):
                return super().__new__(cls, (a, b))

        class Frozen(Mapping):
            def __init__(self, **items):
                self._items = items

            def __getitem__(self, key):
                return self._items[key]

            def __iter__(self):
                return iter(self._items)

            def __len__(self):
                return len(self._items)

        class Tagged(collections.namedtuple("Base", "scale")):
            def __new__(cls, scale):
                self = super().__new__(cls, scale)
                self.tag = "t"
                return self

        class Config(dict):
            def __init__(self, name="config", **items):
                super().__init__(**items)
                self.name = name

        class Reading(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = PointNetLike(in_channels=5).double()

            def forward(self, data):
                assert data.tagged.tag == "t" and data.config.name == "c"
                scale = data.pair[0] * data.frozen["scale"] * data.tagged.scale * data.config["scale"]
                return self.net(Batch(pos=data.pos * scale, x=data.x, batch=data.batch, ptr=data.ptr))

        torch.manual_seed(0)
        batch = make_batch(features=2)
        batch.pair, batch.frozen = Pair(2.0, 3.0), Frozen(scale=1.5)
        batch.tagged, batch.config = Tagged(0.5), Config("c", scale=2.0)
        kept = (batch.pair, batch.frozen, batch.tagged, batch.config)
        rels = relevance_graph(Reading(), batch, batch.y, backend=backend)
        assert all(rel.abs().sum() > 0 for rel in rels.values())
        assert all(now is then for now, then in zip((batch.pair, batch.frozen, batch.tagged, batch.config), kept))

    def test_auto_is_fast_and_predicted_class(self):
        model = PointNetLike(seed=3).double()
        batch = make_batch(seed=3)
        auto = relevance_graph(model, batch)  # no fallback warning (warnings are errors for this package)
        fast = relevance_graph(model, batch, backend="fast")
        predicted = model.eval()(batch).argmax(1)
        model.train()
        with_labels = relevance_graph(model, batch, predicted, backend="fast")
        for key in auto:
            torch.testing.assert_close(auto[key], fast[key], rtol=0, atol=0)
            torch.testing.assert_close(auto[key], with_labels[key], rtol=0, atol=0)

    def test_single_data_is_one_cloud(self):
        model = PointNetLike(seed=4).double()
        batch = make_batch(sizes=(7,), seed=4)
        data = batch.get_example(0)
        data.batch = torch.zeros(7, dtype=torch.long)
        data.num_graphs = 1
        one = relevance_graph(model, data, data.y, backend="fast")
        ref = relevance_graph(model, batch, batch.y, backend="fast")
        for key in ref:
            torch.testing.assert_close(one[key], ref[key], rtol=0, atol=0)

    def test_pyg_linear_and_mlp_equal_torch_nn_rebuild(self):
        # PyG's MLP registers its children as (act, lins, norms): zennit's SequentialMergeBatchNorm, which pairs a
        # BatchNorm with the linear layer before it in child order, cannot merge it correctly. The fast engine merges
        # by execution order, so it is checked against the same computation rebuilt from torch.nn layers, on which
        # zennit is the reference as well.
        pyg = PygMLPNet(seed=5).double()
        plain = rebuilt(pyg)
        batch = make_batch(seed=5)
        pyg.eval(), plain.eval()
        torch.testing.assert_close(pyg(batch), plain(batch), rtol=1e-12, atol=1e-12)  # really the same function
        pyg.train(), plain.train()
        fast_pyg = relevance_graph(pyg, batch, batch.y, backend="fast")
        fast_plain = relevance_graph(plain, batch, batch.y, backend="fast")
        zennit_plain = relevance_graph(plain, batch, batch.y, backend="zennit")
        for key in ("pos", "x"):
            assert fast_pyg[key].abs().sum() > 0
            torch.testing.assert_close(fast_pyg[key], fast_plain[key], rtol=1e-12, atol=1e-14)
            assert rel_l2(fast_pyg[key], zennit_plain[key]) <= 1e-9, key
        assert pyg.training and pyg.mlp.norms[0].module.training

    def test_mean_aggregation_norm_rule_conserves_relevance(self):
        # The check: in a bias-free model (no BatchNorm) with a tiny epsilon, every rule conserves relevance (Flat,
        # Epsilon up to epsilon, Pass on ReLU), so the relevance of each cloud's input, summed over its points and
        # its pos and x channels, equals the output relevance put on that cloud (1 for a one-hot label, the sum of a
        # soft label) only if the pooling conserves it per cloud, as the Norm rule does:
        # R_i = h_i / n_c * R_mean / stab(mean). A rule that ignored the segment sizes would scale cloud c by n_c.
        # Norm's stabiliser (1e-6, zennit's) absorbs a little relevance wherever a channel's mean is small, so the
        # exact value is also checked against the rules written out by hand.
        model = PointNetLike(seed=6, aggr=MeanAggregation(), bias=False, batch_norm=False).double()
        batch = make_batch(sizes=(5, 9, 12, 6), seed=6)
        soft = torch.tensor([[0.5, 0.0, 2.0, 0.0]] * 4, dtype=torch.float64)
        for labels, total in ((batch.y, 1.0), (soft, 2.5)):
            rels = relevance_graph(model, batch, labels, backend="fast", epsilon=1e-12)
            per_point = rels["pos"].sum(1) + rels["x"].sum(1)
            per_cloud = torch.zeros(4, dtype=torch.float64).index_add_(0, batch.batch, per_point)
            torch.testing.assert_close(per_cloud, torch.full((4,), total, dtype=torch.float64), rtol=1e-3, atol=0)
            by_hand = lrp_by_hand(model, batch, labels, epsilon=1e-12)
            assert rel_l2(torch.cat([rels["pos"], rels["x"]], 1), by_hand) <= 1e-9

    def test_mean_aggregation_matches_dense_average_pooling_in_zennit(self):
        # With equal-size clouds, MeanAggregation is AdaptiveAvgPool1d over the points, which zennit gives the Norm
        # rule: the fast engine on the PyG model equals zennit on the dense model with the same weights.
        pyg = PointNetLike(seed=7, aggr=MeanAggregation()).double()

        class Dense(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin1, self.bn1, self.relu1 = pyg.lin1, pyg.bn1, pyg.relu1
                self.lin2, self.relu2, self.head = pyg.lin2, pyg.relu2, pyg.head
                self.pool, self.flatten = nn.AdaptiveAvgPool1d(1), nn.Flatten()

            def forward(self, points):  # (B, N, 5)
                b, n, c = points.shape
                h = self.relu1(self.bn1(self.lin1(points.reshape(b * n, c))))
                h = self.relu2(self.lin2(h)).reshape(b, n, -1).transpose(1, 2)
                return self.head(self.flatten(self.pool(h)))

        batch = make_batch(sizes=(8, 8, 8), seed=7)
        fast = relevance_graph(pyg, batch, batch.y, backend="fast")
        dense_points = torch.cat([batch.pos, batch.x], 1).reshape(3, 8, 5)
        ref = relevance(Dense(), dense_points, batch.y, backend="zennit").reshape(24, 5)
        assert rel_l2(torch.cat([fast["pos"], fast["x"]], 1), ref) <= 1e-9

    def test_model_state_and_inputs_untouched(self):
        model = PointNetLike(seed=8).double()
        batch = make_batch(seed=8)
        model.train()
        model(batch).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        running = model.bn1.running_mean.clone()
        pos, x = batch.pos.clone(), batch.x.clone()
        for backend in ("fast", "zennit"):
            relevance_graph(model, batch, batch.y, backend=backend)
            assert model.training
            assert torch.equal(model.bn1.running_mean, running)
            for name, p in model.named_parameters():
                assert torch.equal(p.grad, grads[name]), name
            assert torch.equal(batch.pos, pos) and torch.equal(batch.x, x)
            assert not batch.pos.requires_grad and batch.pos.grad is None

    def test_keys(self):
        model = PointNetLike(seed=9).double()
        batch = make_batch(seed=9)
        only_pos = relevance_graph(model, batch, batch.y, keys=("pos",), backend="fast")
        assert set(only_pos) == {"pos"}

    # -- errors --------------------------------------------------------------------------------------------------

    def test_missing_pos(self):
        batch = Batch.from_data_list([Data(x=torch.randn(5, 5, dtype=torch.float64), y=torch.tensor([0]))] * 2)
        with pytest.raises(ValueError, match="expects point clouds with node positions `pos`"):
            relevance_graph(PointNetLike().double(), batch, batch.y)

    def test_hetero_data(self):
        from torch_geometric.data import HeteroData

        data = HeteroData()
        data["points"].pos = torch.randn(5, 3, dtype=torch.float64)
        with pytest.raises(TypeError, match=r"relevance_graph expects homogeneous point clouds .* but got a HeteroData: "
                                            r"attribute one node type as a Data of its own"):
            relevance_graph(PointNetLike().double(), data, torch.tensor([0]))

    @pytest.mark.parametrize("labels", [torch.tensor([0, 1]), torch.tensor([0, 1, 2, 3]), torch.zeros(2, 4)])
    def test_labels_mismatch(self, labels):
        batch = make_batch()
        with pytest.raises(ValueError, match=r"labels of shape .* do not match a batch of 3 clouds"):
            relevance_graph(PointNetLike().double(), batch, labels)

    def test_labels_not_a_tensor(self):
        batch = make_batch()
        # a type error (house style: TypeError for types; was a ValueError before the shared label checker)
        with pytest.raises(TypeError, match=r"the labels should be a torch.Tensor, but got list"):
            relevance_graph(PointNetLike().double(), batch, [0, 1, 2])

    def test_x_rows_differ_from_pos(self):
        batch = make_batch()
        batch.x = batch.x[:-1]
        with pytest.raises(ValueError, match=r"`x` has 25 rows but `pos` has 26 nodes"):
            relevance_graph(PointNetLike().double(), batch, batch.y)

    def test_dtype_mismatch(self):
        batch = make_batch(dtype=torch.float32)
        with pytest.raises(ValueError, match=r"relevance_graph \(pos\): the inputs have dtype torch.float32"):
            relevance_graph(PointNetLike().double(), batch, batch.y)


class TestAttributeGraphIndex:
    """``Attributor.attribute_graph(index=...)``: only the selected clouds are attributed (the model runs on a batch of
    them alone), with each cloud's relevance as in the whole batch, and the same errors whatever the selection."""

    @staticmethod
    def counting(model):
        seen = []
        model.register_forward_pre_hook(lambda module, args: seen.append(args[0].num_graphs))
        return seen

    @pytest.mark.parametrize("index", [[1, 3], [3, 1], [0, 2, 3, 4], [4]])
    def test_selected_clouds_alone_as_in_the_whole_batch(self, index):
        from reldrop_transforms.attribution import Attributor

        model = PointNetLike().double()
        batch = make_batch(sizes=(5, 9, 12, 7, 4))
        full = relevance_graph(model, batch, batch.y)
        seen = self.counting(model)
        rows = Attributor(model).attribute_graph(batch, batch.y, index=torch.tensor(index))
        # one cloud goes with another (a model may not take a batch of one); otherwise the selected clouds alone
        assert seen == [max(len(index), 2)]
        nodes = torch.cat([torch.arange(batch.ptr[i], batch.ptr[i + 1]) for i in index])
        for key in ("pos", "x"):
            assert rows[key].shape == (nodes.numel(), batch[key].shape[1])
            torch.testing.assert_close(rows[key], full[key][nodes], rtol=1e-12, atol=1e-14)

    def test_every_cloud_selected_is_the_batch_itself(self, monkeypatch):
        from reldrop_transforms.attribution import Attributor

        model = PointNetLike().double()
        batch = make_batch(sizes=(5, 9, 12))
        full = relevance_graph(model, batch, batch.y)
        collations = []
        original = Batch.from_data_list.__func__
        monkeypatch.setattr(Batch, "from_data_list", classmethod(
            lambda cls, *args, **kwargs: collations.append(1) or original(cls, *args, **kwargs)))
        rows = Attributor(model).attribute_graph(batch, batch.y, index=torch.tensor([True, True, True]))
        assert collations == []  # (no sub-batch collated: the clouds, in order, are the batch)
        Attributor(model).attribute_graph(batch, batch.y, index=torch.tensor([2, 1, 0]))
        assert collations == [1]
        for key in full:
            torch.testing.assert_close(rows[key], full[key], rtol=0, atol=0)

    @pytest.mark.parametrize("index, error, match", [
        ([0, 2], TypeError, "index should be a 1-d tensor of row numbers or a boolean mask, but got list"),
        (torch.tensor([1, 3]), ValueError, r"row numbers in \[0, 3\) for a batch of 3, but got 1..3"),
        (torch.tensor([True, False]), ValueError, r"boolean index should have the batch's shape \(3,\)"),
        (torch.tensor([0.0]), ValueError, r"row numbers \(a signed integer dtype\) .* but got a 1-d torch.float32"),
    ])
    def test_bad_index(self, index, error, match):
        from reldrop_transforms.attribution import Attributor

        batch = make_batch(sizes=(5, 9, 12))
        with pytest.raises(error, match=match):
            Attributor(PointNetLike().double()).attribute_graph(batch, batch.y, index=index)

    def test_a_boolean_mask_and_no_cloud(self):
        from reldrop_transforms.attribution import Attributor

        model = PointNetLike().double()
        batch = make_batch(sizes=(5, 9, 12, 7))
        by_number = Attributor(model).attribute_graph(batch, batch.y, index=torch.tensor([0, 2]))
        by_mask = Attributor(model).attribute_graph(batch, batch.y, index=torch.tensor([True, False, True, False]))
        for key in by_number:
            torch.testing.assert_close(by_mask[key], by_number[key], rtol=0, atol=0)
        seen = self.counting(model)
        none = Attributor(model).attribute_graph(batch, batch.y, index=torch.tensor([], dtype=torch.long))
        assert {key: tuple(value.shape) for key, value in none.items()} == {"pos": (0, 3), "x": (0, 2)}
        assert seen == [2]  # a forward of the first two clouds alone (for the label check)

    @pytest.mark.parametrize("index", [None, [1], [0, 2], []])
    def test_every_label_validated_whatever_the_selection(self, index):
        from reldrop_transforms.attribution import Attributor

        model = PointNetLike().double()
        batch = make_batch(sizes=(5, 9, 12))
        labels = torch.tensor([0, 1, 99])
        with pytest.raises(ValueError, match=r"class indices in \[0, 3\].*\[99\]"):
            Attributor(model).attribute_graph(batch, labels, index=None if index is None else torch.tensor(
                index, dtype=torch.long))

    def test_a_model_error_is_the_whole_batch_s_whatever_the_selection(self):
        from reldrop_transforms.attribution import Attributor

        class NeedsThree(PointNetLike):  # fails on a batch of fewer than 3 clouds, naming its size
            def forward(self, data):
                if data.num_graphs < 3:
                    raise RuntimeError(f"got a batch of {data.num_graphs} clouds")
                return super().forward(data)

        model = NeedsThree().double()
        batch = make_batch(sizes=(5, 9, 12, 3))
        messages = set()
        for index in ([1], [0, 3], []):
            with pytest.raises(RuntimeError) as caught:
                Attributor(model).attribute_graph(batch, batch.y, index=torch.tensor(index, dtype=torch.long))
            messages.add(str(caught.value))
        # the whole batch goes through: the error is the selection's own (it cannot be the batch's)
        assert messages == {"got a batch of 2 clouds"}

        class NeverRuns(PointNetLike):
            def forward(self, data):
                raise RuntimeError(f"no: {data.num_graphs} clouds")

        messages = set()
        for index in ([1], [0, 3], []):
            with pytest.raises(RuntimeError) as caught:
                Attributor(NeverRuns().double()).attribute_graph(batch, batch.y,
                                                                 index=torch.tensor(index, dtype=torch.long))
            messages.add(str(caught.value))
        assert messages == {"no: 4 clouds"}  # the whole batch's, whatever the selection

    @pytest.mark.parametrize("change", ["attribute after collation", "resized", "hand-built", "single Data"])
    def test_a_batch_that_cannot_be_split_is_attributed_whole(self, change):
        # Batch.index_select leaves out attributes set after collation and slices tensors by the collation's
        # bookkeeping: where that would not give the model what the batch holds, the whole batch is attributed
        from reldrop_transforms.attribution import Attributor

        class ReadsScale(PointNetLike):
            def forward(self, data):
                return super().forward(data) * data.scale.mean()

        model = ReadsScale().double()
        batch = make_batch(sizes=(5, 9, 12))
        batch.scale = torch.tensor([2.0], dtype=torch.float64)
        index = torch.tensor([0, 2])
        if change == "resized":
            batch = make_batch(sizes=(5, 9, 12))
            model = PointNetLike().double()
            batch.x = torch.cat([batch.x, batch.x[:2]])[2:]  # the same rows, not the collation's tensor
            batch.pos = batch.pos[torch.arange(batch.num_nodes)]
            batch.extra = torch.zeros(1)  # and one attribute of its own
        elif change == "hand-built":
            batch = Batch(pos=batch.pos, x=batch.x, y=batch.y, batch=batch.batch, ptr=batch.ptr, scale=batch.scale)
        elif change == "single Data":
            batch = Data(pos=batch.pos[:5], x=batch.x[:5], y=batch.y[:1], scale=batch.scale,
                         batch=torch.zeros(5, dtype=torch.long), num_graphs=1)
            index = torch.tensor([0])
        full = relevance_graph(model, batch, batch.y)
        seen = []
        model.register_forward_pre_hook(lambda module, args: seen.append(args[0].pos.shape[0]))
        rows = Attributor(model).attribute_graph(batch, batch.y, index=index)
        assert seen == [batch.pos.shape[0]]
        ptr = batch.ptr if isinstance(batch, Batch) else torch.tensor([0, 5])
        nodes = torch.cat([torch.arange(ptr[i], ptr[i + 1]) for i in index])
        for key in ("pos", "x"):
            torch.testing.assert_close(rows[key], full[key][nodes], rtol=1e-12, atol=1e-14)

    def test_non_finite_relevance_names_the_batch_s_clouds(self):
        from reldrop_transforms.attribution import Attributor

        class Infinite(PointNetLike):  # cloud 3's logits infinite
            def forward(self, data):
                out = super().forward(data)
                return out * torch.where(data.cloud_id == 3, math.inf, 1.0).to(out.dtype)[:, None]

        batch = Batch.from_data_list([Data(pos=torch.randn(4 + i, 3, dtype=torch.float64),
                                           x=torch.randn(4 + i, 2, dtype=torch.float64), y=torch.tensor([0]),
                                           cloud_id=torch.tensor([float(i)])) for i in range(5)])
        with pytest.raises(ValueError, match=r"for sample\(s\) \[3\] of the batch"):
            Attributor(Infinite().double()).attribute_graph(batch, batch.y, index=torch.tensor([1, 3]))
