"""Attribution leaves the training state exactly as it found it (issue: model-state guarantees).

This module also runs against zennit 1.0.0 (see test_zennit_versions.py), which replaces nn.Parameter objects,
adds `bias` keys and shadows attributes while attributing; everything here must hold for both releases.
"""

import os

import pytest
import torch
from torch import nn

import reldrop_transforms as rt
from reldrop_transforms.attribution import preserved_model_state, relevance

from _models import Boom, small_cnn, tiny_resnet, warm_up_batchnorm
from helpers import assert_same_state, snapshot


def prepared(model: nn.Module) -> nn.Module:
    """A model in the middle of training: warm BN statistics, existing .grad, a frozen and an eval submodule."""
    warm_up_batchnorm(model)
    model.train()
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.weight.requires_grad_(False)
    first.weight.grad = None
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.eval()  # deliberately frozen BatchNorm must stay in eval
    model.register_forward_hook(lambda *args: None)  # the user's own hook must survive
    return model


MODELS = {"small_cnn": small_cnn, "resnet18": tiny_resnet}


def test_zennit_version_under_test():
    """When run by test_zennit_versions.py, make sure the intended zennit release is the one imported."""
    import importlib.metadata

    import zennit

    expected = os.environ.get("RELDROP_EXPECT_ZENNIT")
    version = importlib.metadata.version("zennit")
    if expected is None:
        assert version.startswith(("0.5", "1.0")), version
    else:
        assert version == expected, (version, zennit.__file__)


BACKENDS = [("epsilon_flat", "fast"), ("epsilon_flat", "zennit"), ("epsilon_plus_flat", "zennit")]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("composite,backend", BACKENDS)
def test_relevance_restores_everything(name, composite, backend):
    torch.manual_seed(0)
    model = prepared(MODELS[name]())
    before = snapshot(model)
    rel = relevance(model, torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 4]), composite=composite, backend=backend)
    assert rel.shape == (3, 3, 16, 16)
    assert rel.abs().sum() > 0
    assert_same_state(before, model)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_transform_restores_everything_and_optimizer_still_updates(name, backend):
    torch.manual_seed(0)
    model = prepared(MODELS[name]())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = snapshot(model)
    transform = rt.RelevanceDropout2d(model, p=1.0, backend=backend)
    images, labels = transform(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert_same_state(before, model)

    # The optimizer built before the call still owns (and updates) every trainable parameter.
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
            if p.grad.abs().sum() > 0:
                assert not torch.equal(p.detach(), trainable[n]), f"{n} was not updated by the optimizer"


@pytest.mark.parametrize("composite,backend", BACKENDS)
def test_state_restored_when_model_raises_mid_forward(composite, backend):
    torch.manual_seed(0)
    model = prepared(small_cnn())
    boom = Boom()
    model[5].register_forward_hook(lambda module, args, out: boom(out))  # fails after the BatchNorm was merged
    boom.armed = True
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        relevance(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), composite=composite, backend=backend)
    assert_same_state(before, model)
    with pytest.raises(RuntimeError, match="boom"):
        rt.RelevanceDropout2d(model, p=1.0, composite=composite, backend=backend)(
            torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
        )
    assert_same_state(before, model)


@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_state_restored_on_bad_labels(backend):
    model = prepared(small_cnn())
    before = snapshot(model)
    with pytest.raises(ValueError, match="class indices"):
        relevance(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 99]), backend=backend)
    assert_same_state(before, model)


@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_autograd_graph_of_a_pending_step_survives(backend):
    """A training forward taken before attribution can still be backpropagated after it (no version bumps)."""
    torch.manual_seed(0)
    model = prepared(small_cnn())
    x = torch.randn(4, 3, 16, 16)
    loss = model(x).square().mean()
    relevance(model, x, torch.tensor([0, 1, 2, 3]), backend=backend)
    loss.backward()  # raises if attribution modified a saved tensor in place


def test_guard_undoes_parameter_replacement_and_storage_swaps():
    model = small_cnn()
    before = snapshot(model)
    conv = model[0]
    with preserved_model_state(model):
        conv.weight = nn.Parameter(torch.zeros_like(conv.weight))  # replaced object
        conv.bias = nn.Parameter(torch.ones(6))  # a key that did not exist
        model[1].running_mean.data = torch.full_like(model[1].running_mean, 7.0)  # swapped storage
        model[1].weight.data.mul_(3)  # in place
        object.__setattr__(model[4], "weight", torch.zeros(1))  # shadowing attribute (zennit 1.0.0 style)
        model[1].eps = 0.0
        model[3].train(False)
        model[9].register_forward_pre_hook(lambda *a: None)
        model[9].weight.register_hook(lambda g: g)
        model[9].weight.requires_grad_(False)
    assert_same_state(before, model)


def test_guard_undoes_post_accumulate_grad_hooks():
    # register_post_accumulate_grad_hook in a forward was left registered (the README: every tensor hook back)
    model = small_cnn()
    calls = []
    model[4].weight.register_post_accumulate_grad_hook(lambda p: calls.append("kept"))
    with preserved_model_state(model):
        model[4].weight.register_post_accumulate_grad_hook(lambda p: calls.append("added"))
        model[9].weight.register_post_accumulate_grad_hook(lambda p: calls.append("added"))
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert calls == ["kept"]


def test_guard_undoes_attribute_deletion_container_swaps_and_reordering():
    model = small_cnn()
    model[0].notes = {"seen": 0}  # a user dict attribute
    model[0].register_forward_hook(lambda *a: None)
    model[0].register_forward_hook(lambda *a: None)
    before = snapshot(model)
    notes, hooks = model[0].notes, list(model[0]._forward_hooks.items())
    with preserved_model_state(model):
        model[0].notes["seen"] = 1
        model[0].notes["extra"] = 2
        del model[1].eps  # an attribute deleted
        model[0]._forward_hooks = type(model[0]._forward_hooks)()  # the hook dict object replaced
        model[3]._forward_pre_hooks.clear()
        model[0].__dict__["_parameters"] = dict(reversed(list(model[0]._parameters.items())))
    assert_same_state(before, model)
    assert model[0].notes is notes and notes == {"seen": 0}
    assert list(model[0]._forward_hooks.items()) == hooks  # same objects, same order


def test_guard_restores_on_exception():
    model = small_cnn()
    before = snapshot(model)
    with pytest.raises(KeyError):
        with preserved_model_state(model):
            model[0].weight = nn.Parameter(torch.zeros_like(model[0].weight))
            model.eval()
            raise KeyError("inside")
    assert_same_state(before, model)


def test_zennit_1_0_0_damage_is_real_without_the_guard():
    """Documents why the guard exists: raw zennit 1.0.0 replaces parameters; 0.5.1 does not."""
    import importlib.metadata

    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    model = small_cnn().eval()
    ids = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    with Gradient(model, EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])) as attributor:
        attributor(torch.randn(2, 3, 16, 16, requires_grad=True), torch.eye(5)[[0, 1]])
    damaged = [id(p) for p in model.parameters()] != ids or list(model.state_dict()) != keys
    assert damaged == importlib.metadata.version("zennit").startswith("1.")


class _Counting(nn.Module):
    """A model whose forward writes its own buffers: a call counter and a running statistic of its input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen_mean", torch.zeros(3))

    def forward(self, x):
        self.calls += 1
        self.seen_mean.mul_(0.9).add_(0.1 * x.detach().mean((0, 2, 3)))
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_buffers_written_by_the_forward_are_restored(backend):
    """Issue: on the fast path ``calls == 1`` after one attribution (only zennit's path restored buffers)."""
    model = _Counting()
    model(torch.randn(2, 3, 8, 8))
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    versions = {name: buffer for name, buffer in model.named_buffers()}
    relevance(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), backend=backend)
    for name, buffer in model.named_buffers():
        assert buffer is versions[name]  # the same tensor objects
        assert torch.equal(buffer, before[name]), name
    assert int(model.calls) == 1


class _WritesParameters(nn.Module):
    """A forward that changes its own parameters in place under no_grad: a max-norm constraint (``copy_``), a
    non-idempotent decay (``.data.mul_``, or an aten overload: ``aten.mul_.Scalar``), an item assignment
    (``weight[0, 0] = ...``), an in-place ``_foreach`` operation on a list of them, and embeddings with ``max_norm``
    (renormed in place inside ``F.embedding`` / ``F.embedding_bag``, unseen by a mode: they stayed renormed)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)
        self.embedding = nn.Embedding(6, 4, max_norm=0.5 if how == "embedding" else None)
        self.bag = nn.EmbeddingBag(6, 4, max_norm=0.5 if how == "embedding_bag" else None)

    def forward(self, x):
        with torch.no_grad():
            if self.how == "renorm":
                self.fc.weight.copy_(torch.renorm(self.fc.weight, 2, 0, maxnorm=0.1))
            elif self.how == "data":
                self.conv.weight.data.mul_(0.5)
            elif self.how == "aten":
                torch.ops.aten.mul_.Scalar(self.conv.weight, 0.5)
            elif self.how == "foreach":
                torch._foreach_clamp_min_([self.fc.weight, self.conv.bias], 0.0)
            elif self.how == "setitem":
                self.fc.weight[0, 0] = 7.0
        positions = torch.arange(x.shape[0]) % 6
        extra = self.embedding(positions) + self.bag(positions[:, None])
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)) + extra)


@pytest.mark.parametrize("how", ["renorm", "data", "aten", "setitem", "foreach", "embedding", "embedding_bag"])
@pytest.mark.parametrize("backend", ["fast", "zennit"])
@pytest.mark.parametrize("p", [1.0, 0.0])
def test_parameters_written_by_the_forward_are_restored(backend, how, p):
    """The fast path recorded no parameter values (a copy of each costs a pass over the weights): fc.weight's row
    norms went from ~0.7 to 0.10 after one attribution of a max-norm forward. p = 0: the one-sample forward that
    checks the labels when no coin came up, which runs without the engine."""
    torch.manual_seed(0)
    model = _WritesParameters(how)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    t = rt.RelevanceDropout2d(model, p=p, backend=backend)
    t(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    model(torch.randn(2, 3, 8, 8))  # (the forward does change them: the test is not vacuous)
    assert any(not torch.equal(param, before[name]) for name, param in model.named_parameters())


class _ManyBuffers(nn.Module):
    """Buffers of every kind the state guard snapshots together (0-d and 1-d, float, long, bool, on one device) and
    apart (2-d), written by the forward in place, through ``.data`` and not at all; one holds a NaN."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("stat", torch.arange(5.0))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("table", torch.ones(2, 3))
        self.register_buffer("untouched", torch.tensor([1.0, float("nan"), 3.0]))
        self.register_buffer("steps", torch.arange(4))
        self.register_buffer("kept", torch.ones(3))  # next to stat, which changes
        self.register_buffer("signed", torch.zeros(2))

    def forward(self, x):
        self.calls += 1
        self.stat.data.mul_(3)  # not seen by autograd's version counter
        self.flags.logical_not_()
        self.table[0, 1] = 7.0
        self.scale.data.fill_(-1.0)
        self.signed.neg_()  # 0.0 -> -0.0: equal, not the same bits
        return self.fc(x)


@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_buffers_of_every_kind_are_restored_and_unchanged_ones_not_rewritten(backend):
    model = _ManyBuffers()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    objects = dict(model.named_buffers())
    versions = {name: buffer._version for name, buffer in model.named_buffers()}
    relevance(model, torch.randn(2, 4), torch.tensor([0, 2]), backend=backend)
    for name, buffer in model.named_buffers():
        assert buffer is objects[name], name
        assert torch.equal(buffer, before[name]) or name == "untouched", name
    assert torch.equal(model.untouched.isnan(), before["untouched"].isnan())
    assert torch.equal(model.untouched.nan_to_num(), before["untouched"].nan_to_num())
    assert not bool(model.signed.signbit().any())  # bit for bit: -0.0 put back as 0.0
    assert model.steps._version == versions["steps"] and model.kept._version == versions["kept"]  # equal values
    # are left alone


def test_set_eval_sets_every_flag_and_respects_train_overrides():
    from reldrop_transforms.attribution._state import set_eval

    calls = []

    class Custom(nn.Linear):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    plain = small_cnn().train()
    set_eval(plain, tuple(plain.modules()))
    assert not any(m.training for m in plain.modules())
    custom = nn.Sequential(small_cnn(), Custom(3, 3)).train()
    calls.clear()
    set_eval(custom, tuple(custom.modules()))
    assert calls == [False] and not any(m.training for m in custom.modules())


@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_backward_hooks_of_the_caller_do_not_run(backend):
    """The caller's module backward hooks are for its training's gradients: attribution's backward computes
    relevance, so they do not run there (was: a hook returning a new grad_input changed the relevance, and logging
    hooks saw relevance as gradients); afterwards they are registered as before and run in a training backward.
    Forward hooks do run: they are part of the model's function (as in zennit)."""
    torch.manual_seed(0)
    model = small_cnn().double().eval()
    x, targets = torch.randn(3, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2])
    expected = relevance(model, x, targets, backend=backend)
    seen = []
    handles = [model[3].register_full_backward_hook(lambda m, gi, go: seen.append("hook") or (gi[0] * 3,)),
               model[3].register_full_backward_pre_hook(lambda m, go: seen.append("pre") or (go[0] * 2,)),
               model[0].register_forward_hook(lambda m, a, o: seen.append("forward"))]
    hooks = {name: list(getattr(model[3], name).items()) for name in ("_backward_hooks", "_backward_pre_hooks")}
    torch.testing.assert_close(relevance(model, x, targets, backend=backend), expected, rtol=0, atol=0)
    assert "hook" not in seen and "pre" not in seen and "forward" in seen
    assert {name: list(getattr(model[3], name).items()) for name in hooks} == hooks
    seen.clear()
    model(x.clone().requires_grad_(True)).sum().backward()
    assert seen == ["forward", "pre", "hook"]
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_what_a_forward_hook_changes_on_the_model(backend):
    """As the README says: dicts and sets held in a module's attributes are put back with the rest of its state
    (a counter in a dict), other objects a hook changes in place keep the change (features appended to a list)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5)).eval()
    model.stats, model.seen, model.features = {"n": 0}, set(), []

    def hook(module, args, out):
        model.stats["n"] += 1
        model.seen.add(len(model.seen))
        model.features.append(out.detach())

    model[0].register_forward_hook(hook)
    relevance(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), backend=backend)
    assert model.stats == {"n": 0} and model.seen == set()
    assert len(model.features) == (1 if backend == "fast" else 2)  # (the zennit backend runs the forward twice)


class _HistoryBuffer(nn.Module):
    """Running statistics assigned without ``detach`` in training (as PyG's ``InstanceNorm`` does): the buffer is not
    a leaf (it has an autograd history) and has no ``.grad``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)
        self.register_buffer("running_mean", torch.zeros(4))

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        if self.training:
            self.running_mean = 0.9 * self.running_mean + 0.1 * h.mean(0)
        return self.fc(h - self.running_mean)


@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_buffer_with_an_autograd_history(backend, recwarn):
    # reading .grad of every buffer gave torch's "The .grad attribute of a Tensor that is not a leaf Tensor is
    # being accessed" warning four times per call (an error under -W error)
    torch.manual_seed(0)
    model = _HistoryBuffer()
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert not model.running_mean.is_leaf
    before = snapshot(model)
    buffer = model.running_mean
    rel = relevance(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), backend=backend)
    assert rel.abs().sum() > 0
    assert not [w for w in recwarn if "not a leaf" in str(w.message)]
    assert model.running_mean is buffer
    assert_same_state(before, model)


class _CopiesIntoBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
        self.register_buffer("last", torch.zeros(4))

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        self.last.copy_(h.mean(0))  # keeps the last batch's mean features: in place, from a value that needs grad
        return self.fc(h)


@pytest.mark.parametrize("backend", ["fast", "zennit"])
def test_forward_copying_a_value_that_needs_grad_into_a_buffer(backend, recwarn):
    # the buffer came out of the pass with an autograd history, and the guard's requires_grad_(False) raised
    # "you can only change requires_grad flags of leaf variables" (both backends); now its history goes with the value
    torch.manual_seed(0)
    model = _CopiesIntoBuffer()
    before = snapshot(model)
    buffer = model.last
    rel = relevance(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), backend=backend)
    assert rel.abs().sum() > 0
    assert model.last is buffer and model.last.is_leaf and not model.last.requires_grad
    assert not [w for w in recwarn if "not a leaf" in str(w.message)]
    assert_same_state(before, model)


@pytest.mark.parametrize("backend, where", [  # (the zennit backend keeps every value instead of ParameterWrites)
    *[("fast", where) for where in ("_TreeRecord", "_TensorsRecord", "_ValueSnapshot", "ParameterWrites")],
    *[("zennit", where) for where in ("_TreeRecord", "_TensorsRecord", "_ValueSnapshot")],
])
@pytest.mark.parametrize("times", [1, 2])
def test_ctrl_c_landing_in_the_restore_still_restores(where, times, backend, monkeypatch):
    # A KeyboardInterrupt raised inside the guard's restore (a second Ctrl-C while an attribution unwinds, or the
    # first one landing there) left the rest unrestored: the model in eval mode, its parameters frozen, the values a
    # forward changed in place. The restore now completes, then the interruption is raised.
    from reldrop_transforms.attribution import _state

    class MaxNorm(nn.Module):  # changes its own weight in place in every forward (a max-norm constraint)
        def __init__(self):
            super().__init__()
            self.body = prepared(small_cnn())

        def forward(self, x):
            with torch.no_grad():
                self.body[0].weight.mul_(0.5)
            return self.body(x)

    model = MaxNorm()
    before = snapshot(model)
    original = getattr(_state, where).restore
    calls = []

    def interrupted(self):
        calls.append(where)
        if len(calls) <= times:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(getattr(_state, where), "restore", interrupted)
    with pytest.raises(KeyboardInterrupt):
        relevance(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), backend=backend)
    assert len(calls) > times  # (it was reached, interrupted, and run again)
    monkeypatch.undo()
    assert_same_state(before, model)


def test_restore_all_retries_interruptions_only():
    from reldrop_transforms.attribution._state import restore_all

    ran = []
    with pytest.raises(ValueError, match="a step's own"):  # an ordinary failure: raised at once, nothing retried
        restore_all(lambda: ran.append(1), lambda: (_ for _ in ()).throw(ValueError("a step's own")),
                    lambda: ran.append(3))
    assert ran == [1]

    def always():
        ran.append("again")
        raise KeyboardInterrupt

    ran.clear()
    with pytest.raises(KeyboardInterrupt):  # interrupted again and again: given up after the retries
        restore_all(always, retries=2)
    assert ran == ["again"] * 3


@pytest.mark.parametrize("backend", ["fast", "zennit"])
@pytest.mark.parametrize("kind", ["custom", "weight_norm", "orthogonal"])
def test_a_call_inside_parametrize_cached_leaves_the_training_step_alone(backend, kind):
    # Inside `with parametrize.cached():` the attribution's parametrized weight (eval mode, parameters not
    # requiring grad) was cached, and the training forward after it in the same block read that constant: the
    # parametrization's `original` got no gradient (.grad None). Now the gradients are those of the step without
    # the transform, bit for bit
    from torch.nn.utils import parametrizations, parametrize

    class Scale(nn.Module):
        def forward(self, w):
            return w * 1.5

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        if kind == "custom":
            parametrize.register_parametrization(model[2], "weight", Scale())
        elif kind == "weight_norm":
            parametrizations.weight_norm(model[2])
        else:
            parametrizations.orthogonal(model[6])
        return model

    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    grads = []
    for call in (False, True):
        model = build()
        t = rt.RelevanceDropout2d(model, p=1.0, backend=backend, generator=torch.Generator().manual_seed(0))
        with parametrize.cached():
            if call:
                t(x, y)
            nn.functional.cross_entropy(model(x), y).backward()
        grads.append({name: param.grad for name, param in model.named_parameters()})
    assert all(grad is not None for grad in grads[0].values())
    for name, grad in grads[0].items():
        assert grads[1][name] is not None, name
        assert torch.equal(grads[1][name], grad), name
    assert parametrize._cache_enabled == 0 and not parametrize._cache  # (cached() left as usual)
