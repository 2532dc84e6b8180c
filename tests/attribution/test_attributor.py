"""Attributor: the one attribution path (rebinding, pickling, locks, threads) and validation before any coin."""

import copy
import pickle
import sys
import threading

import pytest
import torch
from torch import nn

import reldrop_transforms as rt
from reldrop_transforms.attribution import Attributor, relevance
from reldrop_transforms.attribution._attributor import model_lock

from _models import small_cnn, warm_up_batchnorm
from helpers import assert_same_state, snapshot


def bn_model():
    torch.manual_seed(0)
    return warm_up_batchnorm(small_cnn(), shape=(8, 3, 16, 16))


class TestAttributor:
    def test_equals_relevance(self):
        model = bn_model()
        x, targets = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
        torch.testing.assert_close(Attributor(model)(x, targets), relevance(model, x, targets), rtol=0, atol=0)

    def test_index_attributes_those_rows_only(self):
        model = bn_model()
        x, targets = torch.randn(5, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4])
        index = torch.tensor([1, 3])
        rows = Attributor(model)(x, targets, index=index)
        torch.testing.assert_close(rows, relevance(model, x[index], targets[index]))

    @pytest.mark.parametrize("row", [0, 3])
    def test_one_selected_row_of_a_model_that_needs_two(self, row):
        # `.squeeze()` before the head: (K,) for a batch of one, (B, K) otherwise. One selected row (a single coin
        # up) raised "returned (5,)" for a batch of 8 the model takes; no coin, likewise (the label check's
        # forward). Another row now goes along, its relevance dropped: the rows' relevance as in the whole batch
        class Squeezing(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).mean((2, 3), keepdim=True).squeeze())

        model = Squeezing().double()
        x, targets = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.arange(8) % 5
        full = Attributor(model)(x, targets)
        rows = Attributor(model)(x, targets, index=torch.tensor([row]))
        assert rows.shape == (1, 3, 8, 8)
        torch.testing.assert_close(rows, full[row:row + 1], rtol=1e-12, atol=1e-14)
        none = Attributor(model)(x, targets, index=torch.tensor([], dtype=torch.long))
        assert none.shape == (0, 3, 8, 8)
        with pytest.raises(ValueError, match=r"\(B, K\) = \(1, K\) for a batch of 1, but returned \(5,\)"):
            Attributor(model)(x[:1], targets[:1], index=torch.tensor([0]))  # a batch of one: as at p = 1

    def test_a_batch_of_one_gets_the_same_error_whatever_the_coins(self):
        # A model that cannot take one sample (`.squeeze()` before its head), given a batch of one: the error named
        # "(B, K) = (1, K) for a batch of 1" when its coin came up and "(B, K)" alone when none did
        class Squeezing(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).mean((2, 3)).squeeze())

        model, x, targets = Squeezing(), torch.randn(1, 3, 8, 8), torch.tensor([2])
        messages = set()
        for index in (None, torch.tensor([0]), torch.tensor([], dtype=torch.long)):
            with pytest.raises(ValueError) as caught:
                Attributor(model)(x, targets, index=index)
            messages.add(str(caught.value))
        assert messages == {("the model should return logits of shape (B, K) = (1, K) for a batch of 1, but returned "
                             "(5,).")}

    def test_index_still_validates_every_label(self):
        model = bn_model()
        x = torch.randn(3, 3, 16, 16)
        for index in (torch.tensor([0]), torch.tensor([], dtype=torch.long)):
            with pytest.raises(ValueError, match=r"class indices in \[0, 4\].*\[99\]"):
                Attributor(model)(x, torch.tensor([0, 1, 99]), index=index)

    def test_index_as_a_boolean_mask_or_other_integers(self):
        model = bn_model()
        x, targets = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
        expected = Attributor(model)(x, targets, index=torch.tensor([1, 3]))
        for index in (torch.tensor([False, True, False, True]), torch.tensor([1, 3], dtype=torch.int32)):
            torch.testing.assert_close(Attributor(model)(x, targets, index=index), expected, rtol=0, atol=0)
        torch.testing.assert_close(Attributor(model)(x, targets, index=torch.tensor(3)),
                                   Attributor(model)(x, targets, index=torch.tensor([3])), rtol=0, atol=0)

    @pytest.mark.parametrize("index, error, match", [
        ([1, 3], TypeError, "index should be a 1-d tensor of row numbers or a boolean mask, but got list"),
        (torch.tensor([1, 9]), ValueError, r"row numbers in \[0, 4\) for a batch of 4, but got 1..9"),
        (torch.tensor([-1]), ValueError, r"row numbers in \[0, 4\)"),
        (torch.tensor([[1, 3]]), ValueError, r"row numbers \(a signed integer dtype\) .* but got a 2-d torch.int64"),
        (torch.tensor([1.0]), ValueError, r"row numbers \(a signed integer dtype\) .* but got a 1-d torch.float32"),
        (torch.tensor([True, False]), ValueError,
         r"boolean index should have the batch's shape \(4,\), but got \(2,\)"),
        (torch.tensor([1, 0, 1, 1], dtype=torch.uint8), ValueError,
         r"row numbers \(a signed integer dtype\) or a boolean mask, but got a 1-d torch.uint8"),
    ])
    def test_bad_index(self, index, error, match):
        # (were torch's own errors from index_select: "Expected dtype int32 or int64", "index out of range in self")
        with pytest.raises(error, match=match):
            Attributor(bn_model())(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]), index=index)

    def test_rebinding_and_copies(self):
        model = bn_model()
        attributor = Attributor(model)
        clone = copy.deepcopy(attributor)
        assert clone.model is not model and attributor.model is model
        clone.model = model
        assert clone.model is model
        restored = pickle.loads(pickle.dumps(attributor))
        assert restored.model is not model and len(restored._graphs) == 0
        with pytest.raises(TypeError, match="model should be a torch.nn.Module, but got str"):
            attributor.model = "resnet"

    def test_a_zennit_composite_object_says_how_to_pickle(self):
        # pickle failed with "Can't pickle local object 'Flat.__init__.<locals>.<lambda>'" (zennit's rules)
        from zennit.composites import EpsilonPlusFlat

        model = bn_model()
        x, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
        attributor = Attributor(model, composite=EpsilonPlusFlat())
        with pytest.raises(TypeError, match=r"cannot be pickled: its zennit EpsilonPlusFlat object does not pickle "
                           r"\(.*\)\. Give it by name instead \(composite='epsilon_plus_flat'"):
            pickle.dumps(attributor)
        clone = copy.deepcopy(attributor)  # a deep copy does not pickle: it works
        assert clone.model is not model and torch.allclose(clone(x, targets), attributor(x, targets))
        by_name = Attributor(model, composite="epsilon_plus_flat")
        assert torch.equal(pickle.loads(pickle.dumps(by_name))(x, targets), by_name(x, targets))

    def test_copies_attribute_and_rebuild_their_rule_cache(self):
        """The per-class rule cache does not travel with copies, and a state saved before it existed still loads."""
        model = bn_model()
        x, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
        attributor = Attributor(model)
        expected = attributor(x, targets)
        assert attributor._types is not None
        assert pickle.loads(pickle.dumps(attributor))._types is None
        old = Attributor.__new__(Attributor)
        state = attributor.__getstate__()
        del state["_types"]  # as pickled by version 0.1
        old.__setstate__(state)
        old.model = model
        assert torch.equal(old(x, targets), expected)

    def test_models_sharing_a_backbone_in_two_threads(self):
        """Two models that share submodules take turns too (they had a lock each: wrong results, autograd errors
        and parameters left with requires_grad=False)."""
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))
        heads = [nn.Sequential(backbone, nn.Linear(10, 5)).eval(), nn.Sequential(backbone, nn.Linear(10, 3)).eval()]
        assert model_lock(heads[0]) is model_lock(heads[1])
        batches = [torch.randn(4, 3, 16, 16) for _ in range(4)]
        labels = torch.zeros(4, dtype=torch.long)
        expected = [[relevance(head, x, labels) for x in batches] for head in heads]
        problems = []

        def attribute(head, wanted):
            try:
                for _ in range(5):
                    for x, rel in zip(batches, wanted):
                        if not torch.equal(relevance(head, x, labels), rel):
                            problems.append("wrong result")
            except Exception as error:  # noqa: BLE001 (reported below)
                problems.append(repr(error))

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        try:
            threads = [threading.Thread(target=attribute, args=pair) for pair in zip(heads, expected)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
        assert problems == []
        assert all(p.requires_grad for p in backbone.parameters())
        assert all(not m.training for head in heads for m in head.modules())
        assert all(m.inplace for m in backbone if isinstance(m, nn.ReLU))

    @pytest.mark.parametrize("bad, error, match", [
        (dict(composite=3), TypeError, "composite should be a name"),
        (dict(composite="nope"), ValueError, "composite should be one of"),
        (dict(backend="gpu"), ValueError, "backend should be one of"),
        (dict(epsilon=-1), ValueError, "epsilon should be a number >= 0"),
        (dict(dtype="bf16"), TypeError, "dtype should be a torch.dtype"),
        # autocast has no such precision: torch only warned and ran in the model's own (the setting did nothing)
        ({"dtype": torch.int32}, ValueError, r"autocast's precisions.*but got torch.int32"),
        ({"dtype": torch.float64}, ValueError, r"autocast's precisions.*but got torch.float64"),
        (dict(cuda_graphs=1), TypeError, "cuda_graphs should be a bool"),
        (dict(backend="fast", composite="epsilon_plus_flat"), ValueError, "backend='fast' computes the composites"),
    ])
    def test_bad_arguments(self, bad, error, match):
        with pytest.raises(error, match=match):
            Attributor(bn_model(), **bad)


TRANSFORMS = {
    "RelevanceDropout2d": lambda model, **kw: rt.RelevanceDropout2d(model, alpha=0.0, beta=0.5, **kw),
    "RelevanceErasing2d": lambda model, **kw: rt.RelevanceErasing2d(model, **kw),
}


class TestThreads:
    """4 threads x 25 calls of one transform on one model with BatchNorm: before the per-model lock this damaged
    the model in 5 of 5 trials (merged BatchNorm values left in conv weights, hooks left, eval mode)."""

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    def test_four_threads(self, backend):
        model = bn_model().train()
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        before = snapshot(model)
        t = rt.RelevanceDropout2d(model, alpha=0.0, beta=0.5, p=1.0, backend=backend)  # no noise: deterministic
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g))
                   for _ in range(5)]
        expected = [t(images, labels)[0] for images, labels in batches]
        errors, results = [], []

        def work(offset):
            try:
                for i in range(25):
                    k = (i + offset) % len(batches)
                    results.append((k, t(*batches[k])[0]))
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(offset,)) for offset in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors
        assert len(results) == 100
        for k, out in results:
            torch.testing.assert_close(out, expected[k], rtol=0, atol=0)
        assert_same_state(before, model)


_PARKING = {}  # the events of _park (a module-level hook, which pickle can copy)


def _park(module, args):
    """Holds the thread named "attributing" mid-forward until released."""
    if threading.current_thread().name == "attributing" and _PARKING:
        _PARKING["inside"].set()
        _PARKING["release"].wait(10)


class TestCopiesDuringAttribution:
    """A transform copied or pickled while another thread's attribution of its model runs: the copy was taken
    mid-attribution (eval mode, requires_grad=False, the engine's hooks: unusable; or deepcopy raised "Only Tensors
    created explicitly by the user ... support the deepcopy protocol", pickle "cannot pickle 'weakref' object")."""

    @staticmethod
    def _clean(model):
        return (all(m.training for m in model.modules()) and all(p.requires_grad for p in model.parameters())
                and sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 1)

    @pytest.mark.parametrize("how", ["deepcopy", "pickle"])
    def test_waits_for_the_running_attribution(self, how):
        model = bn_model().train()
        inside, release = threading.Event(), threading.Event()
        _PARKING.update(inside=inside, release=release)
        model.register_forward_pre_hook(_park)
        t = rt.RelevanceDropout2d(model, p=1.0)
        x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
        attributing = threading.Thread(target=lambda: t(x, y), name="attributing")
        attributing.start()
        assert inside.wait(10)
        copies = []
        copier = threading.Thread(target=lambda: copies.append(
            copy.deepcopy(t) if how == "deepcopy" else pickle.loads(pickle.dumps(t))))
        copier.start()
        copier.join(0.3)
        waited = copier.is_alive()  # the copy waits for the attribution
        release.set()
        attributing.join(10)
        copier.join(10)
        _PARKING.clear()
        assert waited and len(copies) == 1
        assert self._clean(copies[0].model) and self._clean(model)
        copies[0](x, y)  # usable

    def test_copy_inside_the_attribution_is_refused(self):
        model = bn_model().train()
        t = rt.RelevanceDropout2d(model, p=1.0)
        model.register_forward_pre_hook(lambda module, args: copy.deepcopy(t) and None)
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="cannot be copied or pickled while an attribution runs in this thread"):
            t(torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,)))
        assert_same_state(before, model)


@pytest.mark.parametrize("backend", ["fast", "zennit"])
@pytest.mark.parametrize("where", ["hook", "forward_fn"])
def test_an_attribution_inside_another_is_refused(backend, where):
    """An attribution started inside another one's forward (a forward_fn, a hook): the lock let it in, and its
    relevance came out of the outer pass's hooks, 11 relative L2 off (found by a peer probe); zennit said
    "BatchNorm1d runs after different layers". Now refused, state kept."""
    from torch_geometric.data import Batch, Data

    from reldrop_transforms.attribution import relevance_graph
    from reldrop_transforms.models import PointNet

    torch.manual_seed(0)
    model = PointNet(in_channels=3, num_classes=4).eval()
    g = torch.Generator().manual_seed(3)
    batch = Batch.from_data_list([Data(pos=torch.randn(20, 3, generator=g), y=torch.tensor([i % 4]))
                                  for i in range(3)])
    expected = relevance_graph(model, batch, batch.y, backend=backend)["pos"]

    def inner(*args):
        relevance_graph(model, batch, batch.y, backend=backend)

    def forward_fn(module, data):
        inner()
        return module(data)

    before = snapshot(model)
    handle = next(model.children()).register_forward_hook(inner) if where == "hook" else None
    try:
        with pytest.raises(ValueError, match="an attribution cannot start inside another one"):
            relevance_graph(model, batch, batch.y, backend=backend, forward_fn=forward_fn if where == "forward_fn"
                            else None)
    finally:
        if handle is not None:
            handle.remove()
    assert_same_state(before, model)
    assert torch.equal(relevance_graph(model, batch, batch.y, backend=backend)["pos"], expected)


def test_training_under_model_lock_beside_a_prefetcher_thread():
    """The documented way to train while another thread attributes the same model: the training steps hold
    ``model_lock``; the trained weights equal those of a copy trained alone, bit for bit."""
    torch.manual_seed(0)
    model = bn_model().train()
    shadow = copy.deepcopy(model)
    t = rt.RelevanceDropout2d(model, p=1.0, generator=torch.Generator().manual_seed(1))  # (not the global RNG)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(6)]
    stop, errors = threading.Event(), []

    def prefetch():
        try:
            while not stop.is_set():
                t(*batches[0])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    prefetcher = threading.Thread(target=prefetch)
    prefetcher.start()
    try:
        for net in (model, shadow):
            torch.manual_seed(2)  # (the model's dropout)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
            for images, labels in batches:
                with rt.attribution.model_lock(net):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(net(images), labels).backward()
                    optimizer.step()
    finally:
        stop.set()
        prefetcher.join(60)
    assert not errors, errors
    for (name, a), b in zip(model.state_dict().items(), shadow.state_dict().values()):
        assert torch.equal(a, b), name


def test_inference_in_another_thread_beside_an_attribution():
    """An eval-mode forward of the same model in another thread while the fast engine attributes it ran the
    engine's hooks on its modules: KeyError and the engine's private _Misjudged in the inference thread, autograd
    errors in the attributing one. The hooks now act on their own pass's thread only."""
    model = bn_model().eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    t = rt.RelevanceDropout2d(model, p=1.0, generator=torch.Generator().manual_seed(0))
    reference = t(x, torch.tensor([0, 1, 2, 3]))[0]
    stop, errors, outputs = threading.Event(), [], []

    def infer():
        try:
            while not stop.is_set():
                with torch.no_grad():
                    outputs.append(model(x))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    inference = threading.Thread(target=infer)
    inference.start()
    try:
        results = []
        for seed in range(30):
            t.generator = torch.Generator().manual_seed(0)
            results.append(t(x, torch.tensor([0, 1, 2, 3]))[0])
    finally:
        stop.set()
        inference.join(60)
    assert not errors, errors
    assert outputs and all(torch.equal(out, expected) for out in outputs)
    assert all(torch.equal(result, reference) for result in results)


class _PausedAfterInPlaceRelu(nn.Module):
    """Reads a convolution's output again after an ``nn.ReLU(inplace=True)`` changed it (``h + r`` is ``2 r`` as
    built); the forward of the thread ``paused[0]`` stops there until ``paused[2]`` is set, having set ``paused[1]``."""

    def __init__(self, inner: nn.Module | None = None):
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Linear(4 * 64, 5)
        self.inner = inner or nn.Identity()
        self.paused = None

    def forward(self, x):
        h = self.conv(x)
        r = self.relu(h)
        if self.paused is not None and threading.get_ident() == self.paused[0]:
            self.paused[1].set()
            assert self.paused[2].wait(30)
        return self.fc(self.inner(h + r).flatten(1))


def _beside_a_paused_attribution(model, attribute, infer):
    """``infer()`` in this thread while ``attribute()`` runs in another, paused inside the model's forward: (the
    attribution's result, ``infer()``'s result)."""
    reached, release, results = threading.Event(), threading.Event(), {}

    def run():
        model.paused = (threading.get_ident(), reached, release)
        try:
            results["attribution"] = attribute()
        except Exception as error:  # noqa: BLE001 - raised below
            results["error"] = error
        finally:
            reached.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert reached.wait(30)
        inferred = infer()
    finally:
        release.set()
        thread.join(30)
        model.paused = None
    if "error" in results:
        raise results["error"]
    return results["attribution"], inferred


@pytest.mark.parametrize("relu", [nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU])
def test_inference_beside_an_attribution_runs_activations_as_built(relu):
    """The engine ran activations built with inplace=True out of place by setting their ``inplace`` flag to False for
    the pass: an inference forward in another thread then computed ``h + relu(h)`` instead of the model's ``2 relu(h)``
    (0.2-0.5 off). The flag stays as built; the engine's own call runs out of place on its thread only."""
    torch.manual_seed(0)
    model = _PausedAfterInPlaceRelu().eval()
    model.relu = relu(inplace=True)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    attributor = rt.attribution.Attributor(model, backend="fast")
    reference = attributor(x, y)
    with torch.no_grad():
        expected = model(x)
    assert not torch.allclose(expected, model.fc((model.conv(x) + relu()(model.conv(x))).flatten(1)))  # (it matters)

    def infer():
        with torch.no_grad():
            return model(x)

    rel, out = _beside_a_paused_attribution(model, lambda: attributor(x, y), infer)
    assert torch.equal(out, expected)
    assert torch.equal(rel, reference)
    assert model.relu.inplace is True


def test_parametrize_cached_in_another_thread_beside_an_attribution():
    """Attribution turned parametrize's cache off process-wide (``_cache_enabled = 0``) and put back the count it
    found: a ``cached()`` block of another thread that began before and ended during the attribution left the count
    at 1 for good, and every later training step read a stale cached weight (no gradient for the parametrization).
    Now only the attributing thread sees no cache. (The fast engine: inference beside zennit's hooks is not
    supported.)"""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    model = _PausedAfterInPlaceRelu(inner=nn.Identity()).eval()
    weight_norm(model.fc)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    attributor = rt.attribution.Attributor(model, backend="fast")
    reference = attributor(x, y)
    with torch.no_grad():
        expected = model(x)
    outputs, block = [], parametrize.cached()
    block.__enter__()  # this thread's cached() block begins before the attribution and ends during it

    def infer():
        try:
            with torch.no_grad():
                outputs.append(model(x))
                outputs.append(model(x))  # (from the cache)
            return parametrize._cache.get((id(model.fc), "weight"))
        finally:
            block.__exit__(None, None, None)
            outputs.append(None)

    try:
        rel, cached_weight = _beside_a_paused_attribution(model, lambda: attributor(x, y), infer)
    finally:
        if outputs[-1:] != [None]:  # (the block not ended: the helper failed before infer)
            block.__exit__(None, None, None)
    outputs.pop()
    assert cached_weight is not None  # this thread cached its weight as usual
    assert all(torch.equal(out, expected) for out in outputs)
    assert torch.equal(rel, reference)
    assert parametrize._cache_enabled == 0 and not parametrize._cache
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()  # a training step after it: gradients as usual
    assert model.fc.parametrizations.weight.original1.grad is not None


class TestValidationBeforeCoins:
    """Labels are validated for the whole batch before any coin: the same error for every seed and p."""

    @pytest.mark.parametrize("name", sorted(TRANSFORMS))
    @pytest.mark.parametrize("labels, error, match", [
        (torch.tensor([0, 1, 2, 99]), ValueError, r"class indices in \[0, 4\].*\[99\]"),
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, "should be integer class indices"),
        (torch.tensor([0, 1, 2]), ValueError, r"labels of shape \(3,\) do not match a batch of 4"),
        (torch.zeros(4, 3), ValueError, r"soft labels should have shape \(B, K\) = \(4, 5\)"),
        (torch.zeros(4, 1, dtype=torch.long), ValueError,
         r"but got \(4, 1\)\. Class indices should have shape \(B,\): labels\.squeeze\(1\)"),
    ])
    def test_same_error_for_every_seed_and_p(self, name, labels, error, match):
        model = bn_model()
        images = torch.randn(4, 3, 16, 16)
        for p in (0.0, 0.5, 1.0):
            for seed in range(6):
                t = TRANSFORMS[name](model, p=p, generator=torch.Generator().manual_seed(seed))
                with pytest.raises(error, match=match):
                    t(images, labels)

    def test_dense_points_too(self):
        from reldrop_transforms.models import PointNet

        torch.manual_seed(0)
        model = PointNet(4, 5).eval()
        points = torch.randn(4, 10, 4)
        for p in (0.0, 0.5, 1.0):
            for seed in range(6):
                t = rt.RelevanceDropout3d(model, p=p, generator=torch.Generator().manual_seed(seed))
                with pytest.raises(ValueError, match=r"class indices in \[0, 4\].*\[99\]"):
                    t(points, torch.tensor([0, 1, 2, 99]))


@pytest.mark.parametrize("name, pyg", [("RelevanceDropout2d", False), ("RelevanceErasing2d", False),
                                       ("RelevanceDropout3d", False), ("RelevanceDropout3d", True),
                                       ("RelevanceErasing3d", False), ("RelevanceErasing3d", True)])
def test_every_transform_refuses_a_dataloader_worker(monkeypatch, name, pyg):
    """The worker check runs first in every transform (and in the Attributor), for every input kind."""
    from reldrop_transforms.models import PointNet

    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    if name.endswith("2d"):
        inputs = (torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
        t = getattr(rt, name)(bn_model())
    else:
        from torch_geometric.data import Batch, Data

        t = getattr(rt, name)(PointNet(3, 4).eval())
        inputs = ((Batch.from_data_list([Data(pos=torch.randn(5, 3), y=torch.tensor([1]))]),) if pyg
                  else (torch.randn(2, 5, 3), torch.tensor([0, 1])))
    with pytest.raises(RuntimeError, match="DataLoader worker.*RelevanceLoader"):
        t(*inputs)
    # a per-sample call in a dataset's __getitem__: the worker error, not the shape error (was "expects a batch of
    # shape (B, C, H, W), but got (3, 16, 16)", whose advice, a collate function, fails in a worker too)
    with pytest.raises(RuntimeError, match="DataLoader worker.*RelevanceLoader"):
        t(inputs[0].get_example(0)) if pyg else t(inputs[0][0], inputs[1][0])
