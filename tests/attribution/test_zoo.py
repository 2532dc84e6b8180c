"""The fast engine on the model zoo: torchvision's classifiers (one per family) and the project's point models.

Each model is built with random weights and warm BatchNorm statistics, in float64, at the smallest input it
accepts; ``backend="fast"`` is compared with ``backend="zennit"`` (zennit's own hooks, with BatchNorm merged in
execution order and each residual add run through a ``zennit.layer.Sum`` with Norm: see
tests/attribution/test_rules.py for those two against stock zennit on equivalent models), and ``backend="auto"``
must run the fast engine with no warning.

Tolerance: ``||fast - zennit|| <= 1e-9 * max(||zennit||, ||R_out||)``, ``R_out`` the output relevance (one per
sample). In ConvNeXt and Swin (v1, v2) a LayerNorm normalises the first layer's output over its channels, so the
relevance Flat spreads there (the channel sum of a LayerNorm's input gradient) is zero in exact arithmetic: both
backends return rounding noise (1e-14 .. 1e6 at epsilon = 1e-3, amplified by the Epsilon layers) that no
comparison can judge. For these the test checks that both are zero up to rounding at epsilon = 1, and compares
the backends on the same model with that LayerNorm replaced by an identity (every other block unchanged). For
Swin v2 that model is still ill-conditioned (relevance of 1e6 from output relevance 1: its post-norm residual
sums divide by 1e-6-stabilised sums, and the two backends' rounding diverges), so the comparison uses torchvision's
SwinTransformer with the same v2 blocks and patch merging in a small, well-conditioned configuration.
"""

import re

import pytest
import torch
import torchvision
from torch import nn

import reldrop_transforms.attribution._attributor as attributor_module
from reldrop_transforms.attribution import Attributor, relevance
from reldrop_transforms.models import DGCNN, PointNet, PointNet2

from _models import warm_up_batchnorm

# One model per family (the smallest); test_every_family_is_represented fails when torchvision adds a family.
REPRESENTATIVES = {
    "alexnet": "alexnet", "convnext": "convnext_tiny", "densenet": "densenet121",
    "efficientnet": "efficientnet_b0", "efficientnet_v2": "efficientnet_v2_s", "googlenet": "googlenet",
    "inception_v3": "inception_v3", "maxvit": "maxvit_t", "mnasnet": "mnasnet0_5", "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small", "regnet_x": "regnet_x_400mf", "regnet_y": "regnet_y_400mf",
    "resnet": "resnet18", "resnext": "resnext50_32x4d", "shufflenet_v2": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_1", "swin": "swin_t", "swin_v2": "swin_v2_t", "vgg": "vgg11_bn",
    "vit": "vit_b_16", "wide_resnet": "wide_resnet50_2",
}
NO_LRP_RULE = {"vit"}
STEM_LAYERNORM = {"convnext_tiny", "swin_t", "swin_v2_t"}  # nn.MultiheadAttention: refused by both backends (test_vit_is_refused)
SIZES = (16, 32, 64, 96, 128, 160, 224, 299)


def family(name: str) -> str:
    """``resnet18`` -> ``resnet``, ``efficientnet_v2_s`` -> ``efficientnet_v2``, ``regnet_y_400mf`` -> ``regnet_y``."""
    base = re.sub(r"(?<!_v)\d.*$", "", name).rstrip("_")
    while True:
        stripped = re.sub(r"_(tiny|small|base|large|huge|t|s|m|l|b|h)$|(?<=_v\d)_x$", "", base)
        if stripped == base:
            return base
        base = stripped


def test_every_family_is_represented():
    names = torchvision.models.list_models(module=torchvision.models)
    missing = sorted({family(name) for name in names} - set(REPRESENTATIVES))
    assert not missing, f"add a representative for {missing}"
    assert all(REPRESENTATIVES[family(name)] in names for name in names)


def build(name: str) -> tuple[nn.Module, int]:
    kwargs = {"num_classes": 5}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    for size in SIZES:  # the smallest input the model accepts
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            break
        except (RuntimeError, ValueError, IndexError):
            continue
    model = warm_up_batchnorm(model, shape=(4, 3, size, size), steps=2)
    return model.double().eval(), size


def small_swin_v2() -> nn.Module:
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2],
                            num_classes=5, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)
    model.features[0][2] = nn.Identity()  # the stem LayerNorm, as above
    return model.double().eval()


def assert_agree(fast, reference, batch_size):
    scale = max(float(reference.norm()), batch_size ** 0.5)
    assert torch.isfinite(reference).all()
    assert float((fast - reference).norm()) <= 1e-9 * scale, float((fast - reference).norm()) / scale


def no_zennit(*args, **kwargs):
    raise AssertionError("backend='auto' used the zennit backend")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(REPRESENTATIVES.values()) - {REPRESENTATIVES[f] for f in NO_LRP_RULE}))
def test_torchvision(name, monkeypatch):
    model, size = build(name)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    targets = torch.tensor([1, 3])
    if name in STEM_LAYERNORM:
        for backend in ("fast", "zennit"):
            assert float(relevance(model, x, targets, backend=backend, epsilon=1.0).norm()) <= 1e-6
        parent, child = next((parent, child) for parent in model.modules() for child, module in parent.named_children()
                             if isinstance(module, nn.LayerNorm))
        setattr(parent, child, nn.Identity())
        if name == "swin_v2_t":
            model, x = small_swin_v2(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    reference = relevance(model, x, targets, backend="zennit")
    fast = relevance(model, x, targets, backend="fast")
    assert_agree(fast, reference, 2)
    monkeypatch.setattr(attributor_module, "zennit_relevance", no_zennit)
    auto = relevance(model, x, targets)  # RelevanceBackendWarning is an error in the suite
    torch.testing.assert_close(auto, fast, rtol=0, atol=0)


def test_vit_is_refused():
    model = torchvision.models.get_model("vit_b_16", weights=None, num_classes=5)
    for backend in ("auto", "fast", "zennit"):
        with pytest.raises(ValueError, match="MultiheadAttention .* has no LRP rule"):
            relevance(model, torch.randn(1, 3, 224, 224), backend=backend)


POINT_MODELS = {
    "PointNet": lambda: PointNet(5, 4),
    "DGCNN": lambda: DGCNN(5, 4, k=6),
    "PointNet2": lambda: PointNet2(5, 4, radii=(0.5, 1.0), max_neighbors=(8, 8)),
}


def point_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = POINT_MODELS[name]().double()
    for module in model.modules():  # eval statistics as after training
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("name", sorted(POINT_MODELS))
def test_point_models_pyg(name, monkeypatch):
    from torch_geometric.data import Batch, Data

    g = torch.Generator().manual_seed(1)
    batch = Batch.from_data_list([Data(pos=torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1,
                                       x=torch.randn(n, 2, generator=g, dtype=torch.float64)) for n in (24, 9, 17)])
    model = point_model(name)
    targets = torch.tensor([0, 3, 1])
    reference = Attributor(model, backend="zennit").attribute_graph(batch, targets)
    fast = Attributor(model, backend="fast").attribute_graph(batch, targets)
    monkeypatch.setattr(attributor_module, "zennit_relevance", no_zennit)
    auto = Attributor(model).attribute_graph(batch, targets)
    for key in ("pos", "x"):
        assert reference[key].abs().sum() > 0
        assert_agree(fast[key], reference[key], 3)
        torch.testing.assert_close(auto[key], fast[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(POINT_MODELS))
def test_point_models_dense(name, monkeypatch):
    model = point_model(name)
    points = torch.rand(3, 20, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    targets = torch.tensor([2, 0, 1])
    reference = relevance(model, points, targets, backend="zennit")
    fast = relevance(model, points, targets, backend="fast")
    assert reference.abs().sum() > 0
    assert_agree(fast, reference, 3)
    monkeypatch.setattr(attributor_module, "zennit_relevance", no_zennit)
    torch.testing.assert_close(relevance(model, points, targets), fast, rtol=0, atol=0)
