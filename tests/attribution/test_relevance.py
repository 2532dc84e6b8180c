"""relevance() against zennit called directly (the oracle), targets, modes and errors."""

import copy

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlusFlat, SpecialFirstLayerMapComposite
from zennit.layer import Sum
from zennit.rules import Epsilon, Flat, Norm, Pass
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, Linear

from reldrop_transforms.attribution import composite_names, relevance

from _models import small_cnn, tiny_resnet, warm_up_batchnorm


def paper_composite(epsilon, canonizers):
    """The paper's composite, spelled out independently of the library's own builder."""
    return SpecialFirstLayerMapComposite(
        layer_map=[
            (Activation, Pass()),
            (Sum, Norm()),
            (AvgPool, Norm()),
            (BatchNorm, Pass()),
            (Linear, Epsilon(epsilon=epsilon)),
        ],
        first_map=[(Linear, Flat())],
        canonizers=canonizers,
    )


def exact_twin(model):
    """The same function with BatchNorm eps folded into running_var and eps = 0.

    zennit 0.5.1's BatchNorm merging leaves the merged BatchNorm dividing by sqrt(1 + eps) instead of being the
    identity (1.0.0 sets eps = 0 for that reason). On a twin with eps = 0 both releases merge exactly, so stock
    zennit on the twin is the oracle for LRP with merged BatchNorm on the original model.
    """
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_var.add_(module.eps)
            module.eps = 0.0
    return twin


def zennit_oracle(model, x, targets, composite):
    model = exact_twin(model).eval()
    grad_output = torch.eye(model(x).shape[1], dtype=x.dtype)[targets]
    with Gradient(model, composite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), grad_output)
    return rel


@pytest.fixture(params=["small_cnn", "resnet18"])
def model_and_canonizer(request):
    torch.manual_seed(0)
    if request.param == "small_cnn":
        return warm_up_batchnorm(small_cnn()).double(), SequentialMergeBatchNorm
    return warm_up_batchnorm(tiny_resnet(), shape=(8, 3, 32, 32)).double(), ResNetCanonizer


class TestRelevance:
    @pytest.mark.parametrize("backend", ["zennit", "fast"])
    @pytest.mark.parametrize("epsilon", [1e-3, 0.25])
    def test_epsilon_flat_matches_zennit(self, model_and_canonizer, epsilon, backend):
        model, canonizer = model_and_canonizer
        x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
        targets = torch.tensor([0, 3, 4])
        ours = relevance(model, x, targets, epsilon=epsilon, backend=backend)
        oracle = zennit_oracle(model, x, targets, paper_composite(epsilon, [canonizer()]))
        torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)
        assert ours.abs().sum() > 0

    def test_registry_name_matches_zennit(self, model_and_canonizer):
        model, canonizer = model_and_canonizer
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        targets = torch.tensor([1, 2])
        ours = relevance(model, x, targets, composite="epsilon_plus_flat", epsilon=1e-4)
        oracle = zennit_oracle(model, x, targets, EpsilonPlusFlat(epsilon=1e-4, canonizers=[canonizer()]))
        torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)

    def test_composite_object_is_used_as_given(self):
        model = warm_up_batchnorm(small_cnn()).double()
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
        targets = torch.tensor([1, 2])
        composite = EpsilonAlpha2Beta1(canonizers=[SequentialMergeBatchNorm()])
        ours = relevance(model, x, targets, composite=composite)
        model.eval()
        with Gradient(model, EpsilonAlpha2Beta1(canonizers=[SequentialMergeBatchNorm()])) as attributor:
            _, oracle = attributor(x.clone().requires_grad_(True), torch.eye(5, dtype=x.dtype)[targets])
        torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)
        # and it differs from the paper's composite: the choice really reaches zennit
        assert not torch.allclose(ours, relevance(model, x, targets))

    def test_box_composite_gets_bounds(self):
        model = warm_up_batchnorm(small_cnn())
        rel = relevance(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), composite="epsilon_gamma_box")
        assert rel.shape == (2, 3, 16, 16) and torch.isfinite(rel).all() and rel.abs().sum() > 0

    def test_box_bounds_are_each_samples_own(self):
        # the bounds were the batch's value range: a sample's relevance changed with a brighter sample beside it,
        # and with which samples the coins selected (9e-2 relative L2 on ResNet-18). Now each sample's own range;
        # compared with zennit's EpsilonGammaBox given those bounds
        from zennit.composites import EpsilonGammaBox

        model = warm_up_batchnorm(small_cnn()).double().eval()
        torch.manual_seed(1)
        x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
        x[1] *= 4.0  # brighter
        targets = torch.tensor([0, 1, 2])
        full = relevance(model, x, targets, composite="epsilon_gamma_box")
        alone = relevance(model, x[:1], targets[:1], composite="epsilon_gamma_box")
        torch.testing.assert_close(full[:1], alone, rtol=1e-10, atol=1e-12)
        low = x.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(x)
        high = x.flatten(1).amax(1).view(-1, 1, 1, 1).expand_as(x)
        oracle = zennit_oracle(model, x, targets,
                               EpsilonGammaBox(low=low, high=high, epsilon=1e-3, canonizers=[SequentialMergeBatchNorm()]))
        torch.testing.assert_close(full, oracle, rtol=1e-10, atol=1e-12)

    def test_box_bounds_that_do_not_fit_the_first_layer_are_said_so(self):
        """A first layer that sees another shape than the model's input (``conv(x[:, :1])``): zennit's ZBox failed
        with "Invalid shape! Target: ...; Source: ...", passed on without the layer or the reason."""

        class Gray(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(self.conv(x[:, :1]).relu().mean((2, 3)))

        model, x = Gray().double(), torch.randn(2, 3, 6, 6, dtype=torch.float64)
        with pytest.raises(ValueError, match=r"box bounds by name are each sample's value range shaped like the "
                           r"model's input \(2, 3, 6, 6\), and zennit's ZBox rule on the first layer \(Conv2d "
                           r"'conv'\) needs them shaped like that layer's own input.*EpsilonGammaBox\(low=\.\.\."):
            relevance(model, x, torch.tensor([0, 2]), composite="epsilon_gamma_box")
        assert relevance(model, x, torch.tensor([0, 2]), composite="epsilon_plus_flat").shape == x.shape

    def test_predicted_class_when_no_targets(self):
        model = warm_up_batchnorm(small_cnn()).double().eval()
        x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
        predicted = model(x).argmax(1)
        torch.testing.assert_close(relevance(model, x), relevance(model, x, predicted))

    def test_soft_labels_are_the_output_relevance(self):
        """LRP is linear in the output relevance: soft labels give the weighted sum of one-hot relevances."""
        model = warm_up_batchnorm(small_cnn()).double()
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
        weights = torch.tensor([[0.7, 0.3, 0, 0, 0], [0, 0, 0.5, 0, 0.5]], dtype=torch.float64)
        expected = torch.stack([
            0.7 * relevance(model, x[:1], torch.tensor([0]))[0] + 0.3 * relevance(model, x[:1], torch.tensor([1]))[0],
            0.5 * relevance(model, x[1:], torch.tensor([2]))[0] + 0.5 * relevance(model, x[1:], torch.tensor([4]))[0],
        ])
        torch.testing.assert_close(relevance(model, x, weights), expected)
        torch.testing.assert_close(
            relevance(model, x, nn.functional.one_hot(torch.tensor([3, 1]), 5).double()),
            relevance(model, x, torch.tensor([3, 1])),
        )

    def test_gradients_enabled_inside_no_grad_and_inference_mode(self):
        model = warm_up_batchnorm(small_cnn())
        x = torch.randn(2, 3, 16, 16)
        expected = relevance(model, x, torch.tensor([0, 1]))
        with torch.no_grad():
            torch.testing.assert_close(relevance(model, x, torch.tensor([0, 1])), expected)
        with torch.inference_mode():
            xi = x.clone()
            torch.testing.assert_close(relevance(model, xi, torch.tensor([0, 1])), expected)

    def test_inputs_not_modified_and_no_graph_attached(self):
        model = small_cnn()
        x = torch.randn(2, 3, 16, 16, requires_grad=True)
        version, copy = x._version, x.detach().clone()
        rel = relevance(model, x, torch.tensor([0, 1]))
        assert x._version == version and torch.equal(x.detach(), copy)
        assert x.grad is None and not rel.requires_grad and rel.grad_fn is None

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    def test_relevance_has_memory_of_its_own(self, backend, layout):
        # Flat spreads one channel over the input's channels: that broadcast view (stride 0) used to come back,
        # and rel.view(B, -1) or rel.mul_(2) raised inside torch.
        model = small_cnn()
        x = torch.randn(2, 3, 16, 16)
        if layout == "channels_last":
            model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        rel = relevance(model, x, torch.tensor([0, 1]), backend=backend)
        assert rel.stride() == x.stride()
        expected = rel.clone()
        assert torch.equal(rel.view(2, -1) if layout == "contiguous" else rel.reshape(2, -1), expected.reshape(2, -1))
        rel.mul_(2)
        assert torch.equal(rel, 2 * expected)

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    def test_a_forward_may_change_its_input_in_place(self, backend):
        # x.sub_(mean).div_(std) in forward, a pre-hook's clamp_: autograd refused that on the leaf ("a leaf
        # Variable that requires grad is being used in an in-place operation"); the model now gets a copy
        class InPlace(nn.Module):
            def __init__(self, in_place):
                super().__init__()
                self.in_place = in_place
                self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1).double())
                self.register_buffer("std", torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1).double())
                self.conv = nn.Conv2d(3, 4, 3)
                self.fc = nn.Linear(4, 5)

            def forward(self, x):
                x = x.sub_(self.mean).div_(self.std) if self.in_place else (x - self.mean) / self.std
                return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

        torch.manual_seed(0)
        model = InPlace(True).double().eval()
        twin = copy.deepcopy(model)
        twin.in_place = False
        x, targets = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
        before = x.clone()
        expected = zennit_oracle(twin, x, targets, paper_composite(1e-3, []))
        torch.testing.assert_close(relevance(model, x, targets, backend=backend), expected, rtol=1e-9, atol=0)
        model.in_place = False
        handle = model.register_forward_pre_hook(lambda module, args: args[0].clamp_(0.25, 0.75))
        clamped = relevance(twin, x.clamp(0.25, 0.75), targets, backend=backend)
        clamped = torch.where((x > 0.25) & (x < 0.75), clamped, torch.zeros_like(clamped))  # clamp's gradient
        torch.testing.assert_close(relevance(model, x, targets, backend=backend), clamped, rtol=1e-9, atol=1e-15)
        handle.remove()
        assert torch.equal(x, before)

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    def test_never_the_callers_soft_labels(self, backend):
        # a model without layers hands the output relevance back as the input's: it was the caller's labels tensor
        soft = torch.rand(2, 12)
        before = soft.clone()
        rel = relevance(nn.Flatten(), torch.randn(2, 3, 2, 2), soft, backend=backend)
        rel.mul_(2)
        assert torch.equal(soft, before)

    @pytest.mark.parametrize("backend", ["fast", "zennit"])
    def test_not_an_inference_tensor_under_inference_mode(self, backend):
        # the fast engine's relevance was copied (see test_relevance_has_memory_of_its_own) after leaving the
        # inference_mode(False) block: an inference tensor, which autograd later refused to save
        model = small_cnn()
        with torch.inference_mode():
            rel = relevance(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), backend=backend)
        assert not rel.is_inference()
        (torch.ones(1, requires_grad=True) * rel.sum()).backward()

    def test_dataparallel_wrapper_is_unwrapped(self):
        model = warm_up_batchnorm(small_cnn())
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(
            relevance(nn.DataParallel(model), x, torch.tensor([0, 1])), relevance(model, x, torch.tensor([0, 1]))
        )

    def test_empty_batch(self):
        out = relevance(small_cnn(), torch.empty(0, 3, 16, 16))
        assert out.shape == (0, 3, 16, 16)

    def test_composite_names(self):
        names = composite_names()
        assert names[0] == "epsilon_flat" and "epsilon_plus_flat" in names and "epsilon_gamma_box" in names


class TestRelevanceErrors:
    def test_bad_backend(self):
        with pytest.raises(ValueError, match="backend should be one of"):
            relevance(small_cnn(), torch.randn(1, 3, 8, 8), backend="magic")

    def test_bad_composite_name(self):
        with pytest.raises(ValueError, match="composite should be one of"):
            relevance(small_cnn(), torch.randn(1, 3, 8, 8), composite="nope")

    def test_bad_composite_type(self):
        with pytest.raises(TypeError, match="composite should be a name"):
            relevance(small_cnn(), torch.randn(1, 3, 8, 8), composite=3)

    def test_integer_inputs(self):
        with pytest.raises(TypeError, match="ToDtype"):
            relevance(small_cnn(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))

    def test_dtype_mismatch(self):
        with pytest.raises(ValueError, match="dtype torch.float64 but the model"):
            relevance(small_cnn(), torch.zeros(1, 3, 8, 8, dtype=torch.float64))

    def test_model_of_mixed_precision(self):
        # a float32 stem after a float64 head in registration order was refused for float32 inputs, which its
        # forward takes (found by a peer probe): any dtype of the model's parameters is taken
        class Mixed(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(144, 3).double()
                self.conv = nn.Conv2d(3, 4, 3)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).flatten(1).double())

        torch.manual_seed(0)
        model, x, targets = Mixed().eval(), torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
        fast = relevance(model, x, targets, backend="fast")
        assert fast.dtype == torch.float32 and fast.abs().sum() > 0
        assert torch.allclose(fast, relevance(model, x, targets, backend="zennit"), rtol=1e-5, atol=1e-7)
        with pytest.raises(ValueError, match=r"dtype torch.float16 but the model's parameters have torch.float32 or "
                                             r"torch.float64"):
            relevance(model, x.half(), targets)

    def test_other_device(self):
        with pytest.raises(ValueError, match="the inputs are on meta but the model is on cpu"):
            relevance(small_cnn(), torch.zeros(1, 3, 8, 8, device="meta"))

    @pytest.mark.parametrize("inputs_device", ["cpu", "meta"])
    def test_model_on_meta(self, inputs_device):
        # the batch was told to move to meta, and on meta the label check failed with torch's .item() error
        model = small_cnn().to("meta")
        inputs, labels = torch.zeros(2, 3, 8, 8, device=inputs_device), torch.tensor([0, 1], device=inputs_device)
        with pytest.raises(ValueError, match="the model's parameters are on the meta device, which holds no data.*"
                           r"to_empty"):
            relevance(model, inputs, labels)

    def test_meta_inputs_to_a_model_without_tensors(self):
        with pytest.raises(ValueError, match="the inputs are on the meta device"):
            relevance(nn.Flatten(), torch.zeros(2, 3, device="meta"))

    def test_output_not_2d(self):
        model = nn.Sequential(nn.Conv2d(3, 2, 3))
        with pytest.raises(ValueError, match=r"logits of shape \(B, K\)"):
            relevance(model, torch.randn(2, 3, 8, 8))

    def test_labels_length(self):
        with pytest.raises(ValueError, match=r"labels of shape \(3,\) do not match a batch of 2"):
            relevance(small_cnn(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1, 2]))

    def test_label_out_of_range(self):
        with pytest.raises(ValueError, match=r"in \[0, 4\].*\[7\]"):
            relevance(small_cnn(), torch.randn(2, 3, 8, 8), torch.tensor([0, 7]))

    @pytest.mark.parametrize("dtype", [getattr(torch, name) for name in  # (uint16/32/64: torch >= 2.3)
                                       ("uint16", "uint32", "uint64", "int8", "int16", "int32", "uint8")
                                       if hasattr(torch, name)])
    def test_any_integer_dtype_of_class_indices(self, dtype):
        """uint16/32/64 labels passed the check and then failed inside torch (``"lt_cpu" not implemented for
        'UInt16'``, in the class-range check); every integer dtype now gives the int64 labels' relevance."""
        torch.manual_seed(0)
        model, x = small_cnn(), torch.randn(2, 3, 8, 8)
        expected = relevance(model, x, torch.tensor([0, 4]))
        assert torch.equal(relevance(model, x, torch.tensor([0, 4]).to(dtype)), expected)
        with pytest.raises(ValueError, match=r"in \[0, 4\].*\[7\]"):
            relevance(model, x, torch.tensor([0, 7]).to(dtype))

    def test_float_indices(self):
        with pytest.raises(TypeError, match="integer class indices"):
            relevance(small_cnn(), torch.randn(2, 3, 8, 8), torch.tensor([0.0, 1.0]))

    def test_soft_labels_wrong_width(self):
        with pytest.raises(ValueError, match="soft labels should have shape"):
            relevance(small_cnn(), torch.randn(2, 3, 8, 8), torch.rand(2, 4))

    def test_non_finite_relevance_names_the_sample(self):
        model = small_cnn()
        x = torch.randn(3, 3, 8, 8)
        x[1, 0, 2, 2] = float("nan")
        with pytest.raises(ValueError, match=r"the inputs should be finite, but are not .* sample\(s\) \[1\]"):
            relevance(model, x, torch.tensor([0, 1, 2]))
        soft = torch.full((3, 5), 0.2)
        soft[2, 1] = float("nan")
        with pytest.raises(ValueError, match=r"the soft labels should be finite, but are not .* sample\(s\) \[2\]"):
            relevance(model, x.nan_to_num(), soft)

    def test_not_a_module(self):
        with pytest.raises(TypeError, match="torch.nn.Module"):
            relevance(lambda x: x, torch.randn(1, 3))
