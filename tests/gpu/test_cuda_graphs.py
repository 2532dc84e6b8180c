"""The CUDA-graph path: what can be checked without a GPU, and the GPU check script's clean skip.

The capture path itself (replay equals eager, recapture rules, last batch, randomness) is checked by
tests/gpu/check_cuda_graphs.py, which must be run on a GPU; here it must skip cleanly without one.
"""

import pathlib
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import reldrop_transforms as rt
from reldrop_transforms.attribution._graphs import model_key

SCRIPT = pathlib.Path(__file__).with_name("check_cuda_graphs.py")


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))


def test_gpu_check_script_skips_cleanly_without_cuda():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    if torch.cuda.is_available():
        assert "all passed" in result.stdout, result.stdout
    else:
        assert "CUDA is not available: skipped" in result.stdout


class TestModelKey:
    def test_in_place_update_keeps_the_key(self):
        model = small_model()
        key = model_key(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model[1].running_mean.mul_(2)
        assert model_key(model) == key

    def test_parameter_replacement_changes_the_key(self):
        model = small_model()
        key = model_key(model)
        model[4].weight = nn.Parameter(model[4].weight.detach().clone())
        assert model_key(model) != key

    def test_buffer_replacement_changes_the_key(self):
        model = small_model()
        key = model_key(model)
        model[1].running_var = model[1].running_var.clone()
        assert model_key(model) != key

    def test_module_tree_change_changes_the_key(self):
        model = small_model()
        key = model_key(model)
        model[2] = nn.ReLU()
        assert model_key(model) != key


class TestCudaGraphsOptionOnCpu:
    def test_cpu_stays_eager_and_equal(self):
        model = small_model()
        images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
        outputs = []
        for graphs in (False, True):
            t = rt.RelevanceDropout2d(model, p=1.0, cuda_graphs=graphs, generator=torch.Generator().manual_seed(3))
            outputs.append(t(images, labels)[0])
            assert len(t._attributor._graphs) == 0
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)

    def test_graphs_are_not_pickled(self):
        t = rt.RelevanceDropout2d(small_model(), cuda_graphs=True)
        clone = pickle.loads(pickle.dumps(t))
        assert clone.cuda_graphs and len(clone._attributor._graphs) == 0
        assert clone._attributor._graphs is not t._attributor._graphs

    def test_bad_option_type(self):
        import pytest

        with pytest.raises(TypeError, match="cuda_graphs should be a bool"):
            rt.RelevanceDropout2d(small_model(), cuda_graphs="yes")


class _EagerGraphs:
    """Stands in for GraphCache on CPU: runs the body that would be captured, directly."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, extra_key, inputs, body):
        self.calls += 1
        return body(*[t.clone() for t in inputs])

    def __len__(self):
        return 0


def point_model():
    torch.manual_seed(0)
    from reldrop_transforms.models import PointNet

    return PointNet(4, 5).eval()


def image_batch():
    return torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])


def point_batch():
    return torch.randn(6, 12, 4), torch.tensor([0, 1, 2, 3, 4, 0])


TRANSFORMS = {
    "RelevanceDropout2d": (lambda: rt.RelevanceDropout2d, small_model, image_batch, {"alpha": 0.3}),
    "RelevanceErasing2d": (lambda: rt.RelevanceErasing2d, small_model, image_batch, {"num_patches": 2, "top_k": 3}),
    "RelevanceDropout3d": (lambda: rt.RelevanceDropout3d, point_model, point_batch, {"alpha": 0.5}),
    "RelevanceErasing3d": (lambda: rt.RelevanceErasing3d, point_model, point_batch, {"radius": (0.2, 0.5)}),
}


class TestCapturedBodyOnCpu:
    """The function that is captured, run eagerly: it must produce the eager transform's mask, for every
    transform (dense batches), for the same generator."""

    def _pair(self, monkeypatch, name, **kwargs):
        import reldrop_transforms.attribution._attributor as attributor_module

        cls, make_model, _, defaults = TRANSFORMS[name]
        model = make_model()
        options = {**defaults, **kwargs}
        eager = cls()(model, generator=torch.Generator().manual_seed(5), **options)
        graph = cls()(model, generator=torch.Generator().manual_seed(5), cuda_graphs=True, **options)
        graph._attributor._graphs = _EagerGraphs()
        monkeypatch.setattr(attributor_module.Attributor, "graphs_apply", lambda self, inputs: self.cuda_graphs)
        return eager, graph

    @pytest.mark.parametrize("p", [1.0, 0.5])
    @pytest.mark.parametrize("name", sorted(TRANSFORMS))
    def test_same_mask_as_eager(self, monkeypatch, name, p):
        eager, graph = self._pair(monkeypatch, name, p=p)
        inputs, labels = TRANSFORMS[name][2]()
        expected = eager(inputs, labels)[0]
        torch.testing.assert_close(graph(inputs, labels)[0], expected, rtol=0, atol=0)
        assert graph._attributor._graphs.calls == 1
        assert not torch.equal(expected, inputs)  # the comparison is not vacuous

    def test_predicted_class_and_soft_labels(self, monkeypatch):
        eager, graph = self._pair(monkeypatch, "RelevanceDropout2d", alpha=0.0, labels_getter=None, p=1.0)
        images = torch.randn(4, 3, 8, 8)
        torch.testing.assert_close(graph(images), eager(images), rtol=0, atol=0)
        eager, graph = self._pair(monkeypatch, "RelevanceDropout2d", alpha=0.0, p=1.0)
        soft = torch.softmax(torch.randn(4, 5), 1)
        torch.testing.assert_close(graph(images, soft)[0], eager(images, soft)[0], rtol=0, atol=0)

    def test_coin_applies_after_capture(self, monkeypatch):
        eager, graph = self._pair(monkeypatch, "RelevanceDropout2d", alpha=0.0, beta=0.9, p=0.5)
        graph.generator = torch.Generator().manual_seed(1)
        images, labels = torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,))
        out = graph(images, labels)[0]
        changed = (out != images).flatten(1).any(1)
        coins = torch.rand(32, generator=torch.Generator().manual_seed(1)) < 0.5
        assert torch.equal(changed, coins)

    @pytest.mark.parametrize("name", sorted(TRANSFORMS))
    def test_invalid_labels_raise(self, monkeypatch, name):
        _, graph = self._pair(monkeypatch, name, p=1.0)
        inputs, _ = TRANSFORMS[name][2]()
        with pytest.raises(ValueError, match="class indices"):
            graph(inputs, torch.tensor([0, 9, 0, 0, 0, 0]))

    def test_model_without_lrp_rule_raises(self, monkeypatch):
        """The engine caches no verdict: a model with no LRP rule gets the same ValueError on the graph path."""
        _, graph = self._pair(monkeypatch, "RelevanceDropout2d", p=1.0)
        graph.model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                                    nn.Linear(144, 5))
        with pytest.raises(ValueError, match="no running statistics"):
            graph(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))


class _StaticGraphs(_EagerGraphs):
    """As a captured graph: every call returns the same output tensors (static buffers), overwritten by the next."""

    def __init__(self):
        super().__init__()
        self.outputs = None

    def __call__(self, model, extra_key, inputs, body):
        outputs = super().__call__(model, extra_key, inputs, body)
        if self.outputs is None:
            self.outputs = tuple(output.clone() for output in outputs)
        for static, output in zip(self.outputs, outputs):
            static.copy_(output)
        return self.outputs


def test_replay_outputs_are_copies_made_under_the_lock(monkeypatch):
    """The replay's static outputs were returned as they are, after the attribution lock was released: another
    thread's replay could overwrite a batch's mask before it was applied (its mask on this thread's images)."""
    import reldrop_transforms.attribution._attributor as attributor_module

    monkeypatch.setattr(attributor_module.Attributor, "graphs_apply", lambda self, inputs: self.cuda_graphs)
    attributor = attributor_module.Attributor(small_model(), cuda_graphs=True)
    attributor._graphs = graphs = _StaticGraphs()
    images, labels = image_batch()
    first = attributor.then(images, labels, lambda rel: (rel * 1,))[0]
    expected = first.clone()
    attributor.then(images.flip(0), labels.flip(0), lambda rel: (rel * 1,))  # the next replay
    assert not torch.equal(graphs.outputs[0], expected)  # (the static buffer did change)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)


def pyg_batch():
    from torch_geometric.data import Batch, Data

    g = torch.Generator().manual_seed(2)
    return Batch.from_data_list([Data(pos=torch.randn(n, 3, generator=g), x=torch.randn(n, 1, generator=g),
                                      y=torch.tensor([i % 5])) for i, n in enumerate((7, 12, 5, 9))])


class TestCapturedBodyOnCpuPyG(TestCapturedBodyOnCpu):
    """The same for PyG batches (the captured body rebuilds the batch from static copies of its tensors)."""

    @pytest.mark.parametrize("p", [1.0, 0.5])
    @pytest.mark.parametrize("name", ["RelevanceDropout3d", "RelevanceErasing3d"])
    def test_same_mask_as_eager(self, monkeypatch, name, p):
        for fill in ("zero", "remove"):
            eager, graph = self._pair(monkeypatch, name, p=p, fill=fill)
            batch = pyg_batch()
            expected, out = eager(batch), graph(batch)
            assert graph._attributor._graphs.calls == 1
            for key in ("pos", "x", "batch"):
                torch.testing.assert_close(out[key], expected[key], rtol=0, atol=0)
            assert not torch.equal(expected.pos, batch.pos) or expected.pos.shape != batch.pos.shape

    def test_invalid_labels_raise(self, monkeypatch):
        _, graph = self._pair(monkeypatch, "RelevanceDropout3d", p=1.0)
        batch = pyg_batch()
        batch.y = torch.tensor([0, 9, 0, 0])
        with pytest.raises(ValueError, match="class indices"):
            graph(batch)

    test_predicted_class_and_soft_labels = test_coin_applies_after_capture = None
    test_model_without_lrp_rule_raises = None


def test_graphs_only_where_they_apply():
    """Capture needs CUDA, the fast engine's composite and the model's own precision (dtype= stays eager)."""
    from types import SimpleNamespace

    on_cuda, on_cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    model = small_model()

    def applies(x, **kwargs):
        return rt.RelevanceDropout2d(model, **kwargs)._attributor.graphs_apply(x)

    assert applies(on_cuda, cuda_graphs=True)
    assert not applies(on_cpu, cuda_graphs=True)
    assert not applies(on_cuda, cuda_graphs=False)
    assert not applies(on_cuda, cuda_graphs=True, dtype=torch.bfloat16)
    assert not applies(on_cuda, cuda_graphs=True, backend="zennit")
    assert not applies(on_cuda, cuda_graphs=True, composite="epsilon_plus_flat")
    for name in ("RelevanceErasing2d", "RelevanceDropout3d", "RelevanceErasing3d"):
        cls, make_model, _, _ = TRANSFORMS[name]
        assert cls()(make_model(), cuda_graphs=True)._attributor.graphs_apply(on_cuda)
