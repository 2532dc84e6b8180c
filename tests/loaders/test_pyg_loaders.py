"""RelevanceLoader / RelevanceCollate with PyTorch Geometric data (issue item 4).

The supported ways to run RelevanceDropout3d on PyG batches from a loader:

1. ``RelevanceLoader(torch_geometric.loader.DataLoader(dataset, ...), t)``: workers allowed, attribution in the
   main process;
2. ``torch.utils.data.DataLoader(dataset, collate_fn=RelevanceCollate(t))`` (``num_workers=0``): RelevanceCollate's
   default collation turns ``Data`` samples into one ``Batch``.

``torch_geometric.loader.DataLoader(dataset, collate_fn=RelevanceCollate(t))`` does NOT work: PyG's loader drops any
user ``collate_fn`` (``kwargs.pop('collate_fn', None)``) and uses its own ``Collater``, so the batches come out
unmasked and without an error. This is tested below so that the documented advice stays true.
"""

from __future__ import annotations

import pytest
import torch
import torch.utils.data
import torch_geometric.loader
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn.aggr import MaxAggregation

from reldrop_transforms import RelevanceCollate, RelevanceDropout3d, RelevanceLoader
from reldrop_transforms.loaders import collate

NUM_CLASSES = 3
BATCH_SIZE = 3


class GraphPointNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin1 = nn.Linear(5, 16)
        self.relu = nn.ReLU()
        self.aggr = MaxAggregation()
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, data):
        h = self.relu(self.lin1(torch.cat([data.pos, data.x], dim=-1)))
        return self.head(self.aggr(h, data.batch, dim_size=data.num_graphs))


@pytest.fixture
def model():
    return GraphPointNet()


@pytest.fixture
def dataset():
    g = torch.Generator().manual_seed(0)
    sizes = [5, 8, 12, 6, 9, 7, 10]
    return [Data(pos=torch.randn(n, 3, generator=g), x=torch.randn(n, 2, generator=g), y=torch.tensor([i % NUM_CLASSES]),
                 point_id=torch.arange(n) + 100 * i)
            for i, n in enumerate(sizes)]


def transform(model):
    # alpha = 0: a deterministic mask (Rn >= 0.5), so that batches can be compared with t(batch) directly.
    return RelevanceDropout3d(model, alpha=0.0, beta=0.5, fill="remove")


def plain_batches(dataset):
    return [Batch.from_data_list(dataset[i:i + BATCH_SIZE]) for i in range(0, len(dataset), BATCH_SIZE)]


def assert_same_batch(actual, expected):
    assert isinstance(actual, Batch)
    assert actual.num_graphs == expected.num_graphs
    assert torch.equal(actual.ptr, expected.ptr) and torch.equal(actual.batch, expected.batch)
    for i in range(expected.num_graphs):
        a, e = actual.get_example(i), expected.get_example(i)
        assert sorted(a.keys()) == sorted(e.keys())
        for key in e.keys():
            assert torch.equal(a[key], e[key]), (i, key)


def assert_masked(batches, dataset, model):
    """Each batch is the transform of the plain batch: fewer points, every example its kept points only."""
    expected = [transform(model)(b) for b in plain_batches(dataset)]
    assert len(batches) == len(expected)
    for out, ref, plain in zip(batches, expected, plain_batches(dataset)):
        assert_same_batch(out, ref)
        assert out.num_nodes < plain.num_nodes  # masks really applied
        assert bool(((out.ptr[1:] - out.ptr[:-1]) >= 1).all())


class CountingTransform:
    def __init__(self, t):
        self.t = t
        self.model = t.model
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        return self.t(batch)


class TestPygLoaders:
    def test_relevance_loader_around_pyg_dataloader(self, model, dataset):
        base = torch_geometric.loader.DataLoader(dataset, batch_size=BATCH_SIZE)
        loader = RelevanceLoader(base, transform(model))
        assert len(loader) == len(base) == 3
        assert loader.batch_size == BATCH_SIZE
        assert_masked(list(loader), dataset, model)

    def test_relevance_loader_with_workers(self, model, dataset):
        base = torch_geometric.loader.DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=1)
        assert_masked(list(RelevanceLoader(base, transform(model))), dataset, model)

    def test_relevance_collate_with_torch_dataloader(self, model, dataset):
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, collate_fn=RelevanceCollate(transform(model)))
        assert_masked(list(loader), dataset, model)

    def test_relevance_collate_directly(self, model, dataset):
        out = RelevanceCollate(transform(model))(dataset[:BATCH_SIZE])
        assert_same_batch(out, transform(model)(Batch.from_data_list(dataset[:BATCH_SIZE])))

    def test_pyg_dataloader_ignores_collate_fn(self, model, dataset):
        # Documented PyG behaviour: torch_geometric.loader.DataLoader pops any collate_fn and uses its own
        # Collater. A RelevanceCollate given to it is never called and the batches come out UNMASKED; use
        # RelevanceLoader around the PyG loader instead (test above).
        counting = CountingTransform(transform(model))
        loader = torch_geometric.loader.DataLoader(dataset, batch_size=BATCH_SIZE,
                                                   collate_fn=RelevanceCollate(counting))
        batches = list(loader)
        assert counting.calls == 0
        assert not isinstance(loader.collate_fn, RelevanceCollate)
        for out, plain in zip(batches, plain_batches(dataset)):
            assert_same_batch(out, plain)

    def test_collate_makes_a_batch(self, dataset):
        out = collate(dataset[:BATCH_SIZE])
        assert_same_batch(out, Batch.from_data_list(dataset[:BATCH_SIZE]))
        tensors = collate([torch.zeros(2), torch.ones(2)])
        assert torch.equal(tensors, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))

    def test_relevance_loader_with_labels_in_tuples(self, model, dataset):
        # A loader yielding (batch, labels): the labels come from the second element, as t(batch, labels).
        labels = [torch.tensor([2, 2, 2]), torch.tensor([0, 0, 0]), torch.tensor([1])]
        pairs = list(zip(plain_batches(dataset), labels))
        out = list(RelevanceLoader(pairs, transform(model)))
        for (batch, lab), (got, got_labels) in zip(pairs, out):
            assert got_labels is lab or torch.equal(got_labels, lab)
            assert_same_batch(got, transform(model)(batch, lab)[0])
