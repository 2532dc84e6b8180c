"""Tests of the loader hooks: RelevanceCollate, RelevanceLoader and move_to_device."""

from __future__ import annotations

import collections
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, TensorDataset, default_collate

from reldrop_transforms.loaders import collate as reldrop_collate
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms import v2

from reldrop_transforms import RelevanceCollate, RelevanceDropout2d, RelevanceLoader
from reldrop_transforms.loaders import move_to_device

FILL = 5.0  # never an exact value of randn images
DATASET_SIZE = 12
BATCH_SIZE = 4

Pair = namedtuple("Pair", ["images", "labels"])


class IndexedDataset(Dataset):
    """``(image, label, index)`` samples: the index tells the order in which a sampler visited them."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], i


class ModelHolder:
    """A batch transform that only records the batches it sees; it exposes a model as RelDrop transforms do."""

    def __init__(self, model):
        self.model = model
        self.seen = []

    def __call__(self, batch):
        self.seen.append(batch)
        return batch


@pytest.fixture
def data(make_batch):
    return make_batch(batch_size=DATASET_SIZE, seed=1)  # on the CPU, as a dataset is


@pytest.fixture
def dataset(data):
    return TensorDataset(*data)


def reldrop(model, device, seed=0, **kwargs):
    kwargs.setdefault("p", 1.0)
    kwargs.setdefault("value", FILL)
    return RelevanceDropout2d(model, generator=torch.Generator(device=device).manual_seed(seed), **kwargs)


def expected_batches(model, device, data, **kwargs):
    """The batches a seeded transform gives when applied by hand to the loader's batches, in order."""
    t = reldrop(model, device, **kwargs)
    images, labels = data
    return [
        t(images[i:i + BATCH_SIZE].to(device), labels[i:i + BATCH_SIZE].to(device))
        for i in range(0, len(labels), BATCH_SIZE)
    ]


def assert_masked(images_out, images_in, labels_out, labels_in):
    images_in, labels_in = images_in.to(images_out.device), labels_in.to(labels_out.device)
    dropped = images_out == FILL
    assert bool(dropped.any())  # some pixels were set to the fill value
    assert bool(dropped.all(1).eq(dropped.any(1)).all())  # in every channel at once
    keep = ~dropped
    assert torch.equal(images_out[keep], images_in[keep])
    assert torch.equal(labels_out, labels_in)


class TestRelevanceCollate:
    def test_masks_batches_with_num_workers_0(self, model, device, dataset, data):
        loader = DataLoader(dataset, batch_size=BATCH_SIZE, collate_fn=RelevanceCollate(reldrop(model, device)))
        batches = list(loader)
        expected = expected_batches(model, device, data)
        assert len(batches) == DATASET_SIZE // BATCH_SIZE
        for k, (out_images, out_labels) in enumerate(batches):
            assert out_images.device.type == torch.device(device).type
            start = k * BATCH_SIZE
            assert_masked(out_images, data[0][start:start + BATCH_SIZE], out_labels, data[1][start:start + BATCH_SIZE])
            assert torch.equal(out_images, expected[k][0])

    def test_in_worker_raises_naming_relevance_loader(self, make_model, dataset):
        collate = RelevanceCollate(reldrop(make_model(), "cpu"))
        loader = DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=1, collate_fn=collate)
        iterator = iter(loader)
        message = r"(?s)DataLoader worker process.*RelevanceLoader\(DataLoader"
        with pytest.raises(RuntimeError, match=message) as excinfo:
            next(iterator)
        # The re-raised error and its frames form a cycle that holds the iterator; left to the garbage collector,
        # torch's DataLoader waits 5 s for its worker. Break the cycle so the worker is shut down now.
        excinfo.value.__traceback__ = None
        del excinfo, iterator

    def test_custom_collate_fn(self, model, device, dataset, data):
        calls = []

        def collate(samples):
            calls.append(len(samples))
            images, labels = default_collate(samples)
            return {"image": images, "labels": labels, "size": len(samples)}

        loader = DataLoader(dataset, batch_size=BATCH_SIZE, collate_fn=RelevanceCollate(reldrop(model, device),
                                                                                        collate_fn=collate))
        batches = list(loader)
        assert calls == [BATCH_SIZE] * (DATASET_SIZE // BATCH_SIZE)
        for k, batch in enumerate(batches):
            assert isinstance(batch, dict) and batch["size"] == BATCH_SIZE
            start = k * BATCH_SIZE
            assert_masked(batch["image"], data[0][start:start + BATCH_SIZE], batch["labels"],
                          data[1][start:start + BATCH_SIZE])

    def test_default_collate_and_explicit_device(self, make_model):
        holder = ModelHolder(make_model())
        collate = RelevanceCollate(holder, device="meta")
        assert collate.collate_fn is reldrop_collate
        out = collate([(torch.ones(3, 2, 2), 1), (torch.zeros(3, 2, 2), 0)])
        assert out[0].device.type == "meta" and out[0].shape == (2, 3, 2, 2)
        assert out[1].device.type == "meta"
        assert holder.seen == [out]

    def test_device_resolved_per_batch(self, make_model):
        model = make_model()
        holder = ModelHolder(model)
        collate = RelevanceCollate(holder)
        assert collate([(torch.ones(3, 2, 2), 1)])[0].device.type == "cpu"
        model.to("meta")  # moved after the collate function was built
        assert collate([(torch.ones(3, 2, 2), 1)])[0].device.type == "meta"

    def test_errors(self):
        with pytest.raises(ValueError, match="RelevanceCollate could not find the model in CutMix; pass device="):
            RelevanceCollate(v2.CutMix(num_classes=5))
        with pytest.raises(TypeError, match="RelevanceCollate expects a callable transform, but got int"):
            RelevanceCollate(3)


class TestRelevanceLoader:
    def test_with_workers(self, model, device, dataset, data):
        base = DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=2)
        loader = RelevanceLoader(base, reldrop(model, device))
        assert len(loader) == len(base) == DATASET_SIZE // BATCH_SIZE
        batches = list(loader)
        expected = expected_batches(model, device, data)
        assert len(batches) == len(base)
        for k, (out_images, out_labels) in enumerate(batches):
            assert out_images.device.type == torch.device(device).type
            start = k * BATCH_SIZE
            assert_masked(out_images, data[0][start:start + BATCH_SIZE], out_labels, data[1][start:start + BATCH_SIZE])
            assert torch.equal(out_images, expected[k][0])

    @pytest.mark.parametrize("through", ["sampler", "batch_sampler"])
    def test_set_epoch_reaches_distributed_sampler(self, make_model, data, through):
        dataset = IndexedDataset(*data)
        sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=0)
        if through == "sampler":
            base = DataLoader(dataset, batch_size=2, sampler=sampler)
        else:
            base = DataLoader(dataset, batch_sampler=BatchSampler(sampler, batch_size=2, drop_last=False))
        loader = RelevanceLoader(base, reldrop(make_model(), "cpu"))

        def order():
            return [i for _, _, index in loader for i in index.tolist()]

        assert sampler.epoch == 0
        first = order()
        loader.set_epoch(3)
        assert sampler.epoch == 3
        second = order()
        assert len(first) == len(second) == DATASET_SIZE // 2
        assert first != second
        assert second == list(sampler)  # the loader follows the sampler's new order

    def test_set_epoch_reaches_batch_sampler_and_each_sampler_once(self, make_model, data):
        class CountingSampler(DistributedSampler):
            def set_epoch(self, epoch):
                self.calls = getattr(self, "calls", []) + [epoch]
                super().set_epoch(epoch)

        class BucketBatchSampler(BatchSampler):  # a distributed bucketing sampler: shuffles by its own epoch
            calls = []

            def set_epoch(self, epoch):
                self.calls.append(epoch)

        dataset = IndexedDataset(*data)
        sampler = CountingSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=0)
        batch_sampler = BucketBatchSampler(sampler, batch_size=2, drop_last=False)
        RelevanceLoader(DataLoader(dataset, batch_sampler=batch_sampler), ModelHolder(make_model())).set_epoch(3)
        assert batch_sampler.calls == [3]
        assert sampler.calls == [3]
        shared = CountingSampler(dataset, num_replicas=2, rank=0)  # loader.sampler is batch_sampler.sampler
        base = DataLoader(dataset, batch_size=2, sampler=shared)
        assert base.batch_sampler.sampler is base.sampler
        RelevanceLoader(base, ModelHolder(make_model())).set_epoch(4)
        assert shared.calls == [4]

    def test_set_epoch_prefers_loader_method(self, make_model):
        class EpochLoader(list):
            epochs = []

            def set_epoch(self, epoch):
                self.epochs.append(epoch)

        base = EpochLoader()
        RelevanceLoader(base, ModelHolder(make_model())).set_epoch(7)
        assert base.epochs == [7]

    def test_set_epoch_without_distributed_sampler(self, make_model, dataset):
        base = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)
        RelevanceLoader(base, ModelHolder(make_model())).set_epoch(1)  # nothing to reach: no error
        assert not hasattr(base.sampler, "epoch")

    def test_attribute_passthrough(self, make_model, dataset):
        base = DataLoader(dataset, batch_size=BATCH_SIZE, drop_last=True)
        transform = reldrop(make_model(), "cpu")
        loader = RelevanceLoader(base, transform)
        assert loader.dataset is dataset
        assert loader.batch_size == BATCH_SIZE
        assert loader.drop_last is True
        assert loader.loader is base and loader.transform is transform and loader.device is None
        with pytest.raises(AttributeError):
            loader.no_such_attribute

    def test_transform_without_model_needs_device(self, make_model, dataset):
        base = DataLoader(dataset, batch_size=BATCH_SIZE)
        with pytest.raises(ValueError, match="RelevanceLoader could not find the model in Compose; pass device="):
            RelevanceLoader(base, v2.Compose([v2.CutMix(num_classes=5)]))
        with pytest.raises(TypeError, match="RelevanceLoader expects a callable transform"):
            RelevanceLoader(base, None)
        moved = next(iter(RelevanceLoader(base, lambda batch: batch, device="meta")))
        assert [t.device.type for t in moved] == ["meta", "meta"]

    def test_compose_with_cutmix(self, model, device, dataset, data, num_classes):
        base = DataLoader(dataset, batch_size=BATCH_SIZE)
        transform = v2.Compose([v2.Compose([reldrop(model, device)]), v2.CutMix(num_classes=num_classes)])
        loader = RelevanceLoader(base, transform)  # the model is found inside nested Compose
        for out_images, out_labels in loader:
            assert out_images.shape == (BATCH_SIZE, 3, 12, 12)
            assert out_images.device.type == torch.device(device).type
            assert out_labels.shape == (BATCH_SIZE, num_classes) and out_labels.is_floating_point()
            torch.testing.assert_close(out_labels.sum(1), torch.ones(BATCH_SIZE, device=out_labels.device))
            assert bool((out_images == FILL).any())

    @pytest.mark.parametrize("container", ["tuple", "list", "dict"])
    def test_batch_containers(self, model, device, data, container):
        images, labels = data
        chunks = [(images[i:i + BATCH_SIZE], labels[i:i + BATCH_SIZE]) for i in range(0, DATASET_SIZE, BATCH_SIZE)]
        make = {
            "tuple": lambda x, y: (x, y),
            "list": lambda x, y: [x, y],
            "dict": lambda x, y: {"image": x, "labels": y},
        }[container]
        loader = RelevanceLoader([make(x, y) for x, y in chunks], reldrop(model, device))
        assert len(loader) == len(chunks)
        outputs = list(loader)
        for out, (x, y) in zip(outputs, chunks):
            assert type(out) is type(make(x, y))
            out_images, out_labels = (out["image"], out["labels"]) if container == "dict" else out
            assert out_images.device.type == torch.device(device).type
            assert_masked(out_images, x, out_labels, y)

    def test_device_resolved_per_batch(self, make_model, data):
        model = make_model()
        holder = ModelHolder(model)
        loader = RelevanceLoader([data, data], holder)
        iterator = iter(loader)
        assert next(iterator)[0].device.type == "cpu"
        model.to("meta")  # moved between two batches
        assert next(iterator)[0].device.type == "meta"


    @pytest.mark.parametrize("num_workers", [0, 2])
    def test_a_batch_that_raises_does_not_end_the_epoch(self, make_model, data, num_workers):
        # the iterator was a generator: after the transform raised on one batch, the next next() ended the epoch
        # (7 of 8 batches expected by a loop that skips the bad one, 1 given; found by a peer probe)
        calls = []

        def transform(batch):
            calls.append(len(calls))
            if len(calls) == 2:
                raise ValueError("a bad batch")
            return batch

        images, labels = data
        transform.model = make_model()
        loader = RelevanceLoader(DataLoader(TensorDataset(images, labels), batch_size=2, num_workers=num_workers),
                                 transform)
        iterator, seen, errors = iter(loader), [], 0
        while True:
            try:
                seen.append(next(iterator))
            except ValueError:
                errors += 1
            except StopIteration:
                break
        batches = len(loader)
        assert errors == 1 and len(seen) == batches - 1
        assert torch.equal(torch.cat([labels_batch for _, labels_batch in seen]),
                           torch.cat([labels[:2], labels[4:]]))


class Movable:
    """An object with its own ``to`` (as PyG's Data): records each call's device and non_blocking flag."""

    def __init__(self):
        self.calls = []

    def to(self, device, non_blocking=False):
        self.calls.append((device, non_blocking))
        return self


class TestMoveToDevice:
    def test_none_is_identity(self):
        batch = {"a": torch.ones(2), "b": [torch.zeros(1)]}
        assert move_to_device(batch, None) is batch

    def test_waits_for_copies_to_the_host(self):
        # a copy to the host is waited for (non-blocking, a CUDA batch's values may not have arrived when read);
        # to a device it need not be. Recorded at Tensor.to and at a PyG-like object's own .to
        from helpers import RecordNonBlocking

        for device, non_blocking in (("cpu", False), (torch.device("cpu"), False), ("meta", True)):
            movable = Movable()
            with RecordNonBlocking() as record:
                move_to_device({"x": torch.ones(2), "data": movable}, device)
            assert record.flags == [non_blocking] and [flag for _, flag in movable.calls] == [non_blocking]

    def test_keeps_container_types(self):
        x, y = torch.ones(2, 3), torch.arange(2)
        batch = {
            "tuple": (x, y),
            "list": [x, "name", 3],
            "ordered": OrderedDict([("b", y), ("a", x)]),
            "named": Pair(x, y),
            "nested": [(x, {"deep": y})],
            "none": None,
        }
        out = move_to_device(batch, "meta")
        assert type(out) is dict and list(out) == list(batch)
        assert type(out["tuple"]) is tuple and all(t.device.type == "meta" for t in out["tuple"])
        assert type(out["list"]) is list and out["list"][0].device.type == "meta" and out["list"][1:] == ["name", 3]
        assert type(out["ordered"]) is OrderedDict and list(out["ordered"]) == ["b", "a"]
        assert all(t.device.type == "meta" for t in out["ordered"].values())
        assert type(out["named"]) is Pair and out["named"].images.device.type == "meta"
        assert out["named"].labels.shape == (2,) and out["named"].labels.dtype == torch.int64
        assert type(out["nested"]) is list and type(out["nested"][0]) is tuple
        assert out["nested"][0][1]["deep"].device.type == "meta"
        assert out["none"] is None
        # The original batch is untouched.
        assert x.device.type == "cpu" and batch["tuple"][0] is x

    def test_pyg_objects_of_the_caller_stay_where_they_were(self):
        """PyG's ``Data.to`` works in place: a dataset's Data yielded as it is (``batch_size=None``), a pre-built
        Batch or a Data inside a dict had its tensors swapped for the moved ones (the caller's dataset moved to the
        GPU). The batch handed on is a moved copy, as for tensors. ("meta" stands in for a device.)"""
        from torch_geometric.data import Batch, Data

        clouds = [Data(pos=torch.randn(5, 3), x=torch.randn(5, 2), y=torch.tensor([i])) for i in range(2)]
        batch = Batch.from_data_list(clouds)
        before = [(c.pos, c.x) for c in clouds] + [(batch.pos, batch.batch)]
        moved = [move_to_device(c, "meta") for c in clouds] + [move_to_device({"cloud": batch}, "meta")["cloud"]]
        assert all(m.pos.device.type == "meta" for m in moved)
        assert type(moved[-1]) is type(batch) and moved[-1].num_graphs == 2 and moved[-1].batch.device.type == "meta"
        assert [(c.pos, c.x) for c in clouds] + [(batch.pos, batch.batch)] == before  # the same tensors, on the CPU
        assert all(t.device.type == "cpu" for pair in before for t in pair)

    def test_defaultdict_and_read_only_mappings(self):
        # type(batch)({...}) raised "first argument must be callable or None" for a defaultdict (default_collate's
        # output for defaultdict samples), in RelevanceLoader and RelevanceCollate alike
        import types
        from collections import defaultdict

        x = torch.ones(2)
        batch = defaultdict(list, {"image": x})
        out = move_to_device(batch, "meta")
        assert type(out) is defaultdict and out.default_factory is list and out["image"].device.type == "meta"
        assert out["missing"] == [] and "missing" not in batch and batch["image"] is x
        proxy = move_to_device(types.MappingProxyType({"image": x}), "meta")
        assert proxy["image"].device.type == "meta"

    def test_mapping_copies_never_touch_the_callers_batch(self):
        # (a copy.copy + update of every mapping moved a wrapper's shared dict, and a Counter's update added)
        from collections import Counter
        from collections.abc import MutableMapping

        class Wrapper(MutableMapping):
            def __init__(self, data=None):
                self._d = dict(data or {})

            def __getitem__(self, key):
                return self._d[key]

            def __setitem__(self, key, value):
                self._d[key] = value

            def __delitem__(self, key):
                del self._d[key]

            def __iter__(self):
                return iter(self._d)

            def __len__(self):
                return len(self._d)

        x = torch.ones(2)
        wrapped = Wrapper({"image": x})
        out = move_to_device(wrapped, "meta")
        assert type(out) is Wrapper and out["image"].device.type == "meta" and wrapped["image"] is x
        counted = move_to_device(Counter({"a": torch.tensor(1.0)}), "meta")
        assert type(counted) is Counter and counted["a"].device.type == "meta" and counted["a"].shape == ()
        torch.testing.assert_close(move_to_device(Counter({"a": torch.tensor(1.0)}), "cpu")["a"], torch.tensor(1.0))

    def test_namedtuple_subclass_with_a_new_of_its_own(self):
        # the shared container helper (84c39c2) rebuilt namedtuples with _make, which skips a __new__ of their own
        # (a sample that computes an attribute there lost it); their constructor again, as before
        class Sample(collections.namedtuple("Base", "image label")):
            def __new__(cls, image, label):
                self = super().__new__(cls, image, label)
                self.size = tuple(image.shape)
                return self

        out = move_to_device(Sample(torch.ones(3, 4, 4), torch.tensor(1)), "meta")
        assert type(out) is Sample and out.size == (3, 4, 4) and out.image.device.type == "meta"

    def test_objects_with_to(self):
        graph = Movable()
        module = nn.Linear(2, 2)
        out = move_to_device([graph, module], torch.device("meta"))
        # moved by its own .to, on a shallow copy (a .to that works in place leaves the caller's object alone)
        assert type(out[0]) is Movable and out[0] is not graph
        assert [device for device, _ in graph.calls] == [torch.device("meta")]  # (the copy shares the record)
        assert out[1] is module and module.weight.device.type == "cpu"  # modules are not batch data

    def test_objects_whose_to_takes_the_device_alone(self):
        # a user's batch class with `def to(self, device)` got "unexpected keyword argument 'non_blocking'"
        class DeviceOnly:
            def __init__(self):
                self.devices = []

            def to(self, device):
                self.devices.append(device)
                return self

        batch = DeviceOnly()
        out = move_to_device([batch], torch.device("meta"))
        assert out[0].devices == [torch.device("meta")]

    def test_same_device_keeps_tensor(self, device):
        x = torch.ones(2, device=device)
        out = move_to_device((x,), x.device)
        assert type(out) is tuple and out[0] is x
