"""Helpers shared by the test modules under several directories (import as ``helpers``).

pytest's default ``prepend`` import mode puts ``tests/`` on ``sys.path`` (the directory of the rootmost
``tests/conftest.py``), so every test module can ``import helpers``.
"""

from __future__ import annotations

import torch
from torch import nn

# -- model state: attribution and the transforms must leave a model in training exactly as they found it ------

HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_state_dict_hooks", "_load_state_dict_pre_hooks",
)


def snapshot(model: nn.Module) -> dict:
    """Everything about ``model`` that attribution could change: parameter objects, state values and storage,
    gradients, requires_grad, train/eval flags, hooks, attributes and BatchNorm eps."""
    state = model.state_dict(keep_vars=True)
    return {
        "param_objects": [(name, id(p)) for name, p in model.named_parameters()],
        "state_keys": list(state),
        "values": {name: t.detach().clone() for name, t in state.items()},
        "data_ptrs": {name: t.data_ptr() for name, t in state.items()},
        "grads": {name: (p.grad, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "training": {name: m.training for name, m in model.named_modules()},
        "hooks": {name: sum(len(getattr(m, h)) for h in HOOK_DICTS) for name, m in model.named_modules()},
        "tensor_hooks": {name: len(p._backward_hooks or {}) for name, p in model.named_parameters()},
        "attributes": {name: sorted(vars(m)) for name, m in model.named_modules()},
        "eps": {name: m.eps for name, m in model.named_modules() if hasattr(m, "eps")},
    }


def assert_same_state(before: dict, model: nn.Module) -> None:
    """``model`` is in the state recorded by ``snapshot`` (the same objects, values, storage, flags and hooks)."""
    after = snapshot(model)
    assert after["param_objects"] == before["param_objects"], "nn.Parameter objects were replaced"
    assert after["state_keys"] == before["state_keys"], "state_dict keys changed"
    for name, value in before["values"].items():
        assert torch.equal(after["values"][name], value), f"{name} changed value"
    assert after["data_ptrs"] == before["data_ptrs"], "storage was swapped"
    for name, (grad, grad_value) in before["grads"].items():
        now = dict(model.named_parameters())[name].grad
        assert now is grad, f"{name}.grad was replaced"
        if grad is not None:
            assert torch.equal(now, grad_value), f"{name}.grad was written"
    for key in ("requires_grad", "training", "hooks", "tensor_hooks", "attributes", "eps"):
        assert after[key] == before[key], f"{key} changed"


# -- tiny point-cloud models -----------------------------------------------------------------------------------

POINT_NUM_CLASSES = 4


def warm_batchnorm(bn: nn.BatchNorm1d, seed: int) -> None:
    """Seeded, non-trivial running statistics and affine parameters, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.rand(bn.num_features, generator=g) * 0.4 - 0.2)


class DensePointNet(nn.Module):
    """Shared point MLP (1x1 convolutions, a warm BatchNorm1d after the first unless ``batch_norm=False``), max
    pooling over points, linear head with ``POINT_NUM_CLASSES`` outputs; (B, N, C) or (B, C, N) input."""

    def __init__(self, channels: int = 6, channels_first: bool = False, seed: int = 0, batch_norm: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.channels_first = channels_first
        self.conv1 = nn.Conv1d(channels, 16, 1)
        if batch_norm:
            self.bn1 = nn.BatchNorm1d(16)  # draws no random numbers: the other layers are the same either way
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(32, POINT_NUM_CLASSES)
        if batch_norm:
            warm_batchnorm(self.bn1, seed)

    def forward(self, points):
        h = self.conv1(points if self.channels_first else points.transpose(1, 2))
        if hasattr(self, "bn1"):
            h = self.bn1(h)
        h = self.relu2(self.conv2(self.relu1(h)))
        return self.head(self.flatten(self.pool(h)))


class GraphPointNet(nn.Module):
    """PointNet-like PyG model: MLP on cat([pos, x]) (a warm BatchNorm1d after the first layer unless
    ``batch_norm=False``), max aggregation over ``batch``, linear head with ``POINT_NUM_CLASSES`` outputs."""

    def __init__(self, in_channels: int = 5, seed: int = 0, batch_norm: bool = True) -> None:
        from torch_geometric.nn.aggr import MaxAggregation  # here, so that image-only tests need no PyG import

        super().__init__()
        torch.manual_seed(seed)
        self.lin1 = nn.Linear(in_channels, 16)
        if batch_norm:
            self.bn1 = nn.BatchNorm1d(16)  # draws no random numbers: the other layers are the same either way
        self.relu1 = nn.ReLU()
        self.lin2 = nn.Linear(16, 32)
        self.relu2 = nn.ReLU()
        self.aggr = MaxAggregation()
        self.head = nn.Linear(32, POINT_NUM_CLASSES)
        if batch_norm:
            warm_batchnorm(self.bn1, seed)

    def point_features(self, h):
        """The shared per-point MLP."""
        h = self.lin1(h)
        if hasattr(self, "bn1"):
            h = self.bn1(h)
        return self.relu2(self.lin2(self.relu1(h)))

    def forward(self, data):
        h = data.pos if getattr(data, "x", None) is None else torch.cat([data.pos, data.x], dim=-1)
        return self.head(self.aggr(self.point_features(h), data.batch, dim_size=data.num_graphs))


def assert_dense_points_zeroed(out, out_labels, points, labels, mask, channels_first=False):
    """A dense (B, N, C) or (B, C, N) output: same shape, dtype and plain type as ``points``, ``labels`` passed
    through, every channel of a point in ``mask`` (B, N) zero and every other point equal to the input."""
    assert out.shape == points.shape and out.dtype == points.dtype and type(out) is torch.Tensor
    assert out_labels is labels
    last = out.transpose(1, 2) if channels_first else out
    original = points.transpose(1, 2) if channels_first else points
    assert torch.equal(last[mask], torch.zeros_like(last[mask]))  # all channels of a dropped point
    assert torch.equal(last[~mask], original[~mask])


# -- image batch transforms ------------------------------------------------------------------------------------


def seeded_transform(cls, model, device, **kwargs):
    """``cls(model, generator=<generator on device seeded with kwargs.pop("seed", 0)>, **kwargs)``."""
    seed = kwargs.pop("seed", 0)
    return cls(model, generator=torch.Generator(device=device).manual_seed(seed), **kwargs)


def reference_coins(batch_size, p, generator, device):
    """The indices of the samples a transform selects: all at ``p >= 1`` and none at ``p <= 0`` (no draws either
    way), else those with ``U < p`` for one uniform draw per sample from ``generator``."""
    if p >= 1.0:
        return torch.arange(batch_size, device=device)
    if p <= 0.0:
        return torch.zeros(0, dtype=torch.long, device=device)
    return (torch.rand(batch_size, generator=generator, device=device) < p).nonzero().flatten()


def assert_filled(out, images, mask, value):
    """Masked pixels equal ``value`` in every channel; all other pixels equal the input exactly."""
    value = torch.as_tensor(value, dtype=images.dtype, device=images.device).reshape(-1)
    expected_fill = value.reshape(1, -1, 1, 1).expand_as(images) if value.numel() > 1 else value.expand_as(images)
    dropped = mask[:, None].expand_as(images)
    assert torch.equal(out[dropped], expected_fill[dropped])
    assert torch.equal(out[~dropped], images[~dropped])


class RecordNonBlocking:
    """Context that records the ``non_blocking`` flag of every ``Tensor.to`` call inside it (in ``.flags``): whether
    a copy is waited for, without a GPU to copy from."""

    def __enter__(self):
        from torch.overrides import TorchFunctionMode

        flags = self.flags = []

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func is torch.Tensor.to:
                    flags.append((kwargs or {}).get("non_blocking"))
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def assert_setting_applies_from_the_next_call(t, setting: str, value, sample: tuple, module: nn.Module):
    """Call ``t(*sample)`` in a thread held inside ``module``'s forward, set ``t.<setting> = value`` from another
    thread meanwhile, and assert that the assignment does not wait for the call (no lock: nothing to deadlock on),
    that the call drew nothing from the global RNG, and that the setting is ``value`` afterwards; returns the call's
    output (the caller compares it with the output of the settings before)."""
    import threading

    inside, release, out = threading.Event(), threading.Event(), {}

    def hold(mod, args, result):
        if threading.current_thread() is caller:
            inside.set()
            assert release.wait(60)

    def call():
        out["result"] = t(*sample)

    handle = module.register_forward_hook(hold)
    try:
        global_rng = torch.get_rng_state()
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        assert inside.wait(60)
        setter = threading.Thread(target=setattr, args=(t, setting, value), daemon=True)
        setter.start()
        setter.join(10)
        assert not setter.is_alive()  # set at once, while the call is inside its attribution
        release.set()
        caller.join(60)
    finally:
        release.set()
        handle.remove()
    assert torch.equal(torch.get_rng_state(), global_rng)
    assert getattr(t, setting) == value
    return out["result"]
