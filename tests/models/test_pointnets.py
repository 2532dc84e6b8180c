"""Point-cloud classifiers: shapes for dense and PyG input, invariances, gradients, a little training, attribution."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from reldrop_transforms.attribution import relevance
from reldrop_transforms.models import DGCNN, PointNet, PointNet2

NUM_CLASSES = 3
SIZES = [40, 7, 25]  # the 7-point cloud is smaller than DGCNN's k
MODELS = {
    "PointNet": lambda c: PointNet(c, NUM_CLASSES),
    "DGCNN": lambda c: DGCNN(c, NUM_CLASSES, k=10),
    "PointNet2": lambda c: PointNet2(c, NUM_CLASSES, radii=(0.5, 1.0), max_neighbors=(8, 8)),
}


def _build(name: str, in_channels: int, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name](in_channels).to(dtype)
    for module in model.modules():  # non-trivial eval statistics, as after training
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _clouds(sizes: list[int], features: int, seed: int = 0, dtype=torch.float32) -> list[Data]:
    gen = torch.Generator().manual_seed(seed)
    clouds = []
    for n in sizes:
        data = Data(pos=torch.rand(n, 3, generator=gen, dtype=dtype) * 2 - 1)
        if features:
            data.x = torch.randn(n, features, generator=gen, dtype=dtype)
        clouds.append(data)
    return clouds


def _dense(clouds: list[Data]) -> torch.Tensor:
    return torch.stack([torch.cat([d.pos, d.x], -1) if d.x is not None else d.pos for d in clouds])


@pytest.mark.parametrize("name", list(MODELS))
class TestShapes:
    @pytest.mark.parametrize("features", [0, 3])
    def test_pyg_clouds_of_different_sizes(self, name, features):
        model = _build(name, 3 + features)
        batch = Batch.from_data_list(_clouds(SIZES, features))
        pos_version = batch.pos._version
        assert model(batch).shape == (len(SIZES), NUM_CLASSES)  # train mode
        out = model.eval()(batch)
        assert out.shape == (len(SIZES), NUM_CLASSES) and torch.isfinite(out).all()
        assert batch.pos._version == pos_version  # input untouched

    @pytest.mark.parametrize("features", [0, 3])
    def test_dense(self, name, features):
        model = _build(name, 3 + features)
        points = torch.randn(4, 32, 3 + features)
        assert model(points).shape == (4, NUM_CLASSES)
        assert model.eval()(points).shape == (4, NUM_CLASSES)

    def test_dense_and_pyg_agree(self, name):
        model = _build(name, 6, dtype=torch.float64).eval()
        clouds = _clouds([20, 20, 20], 3, dtype=torch.float64)
        torch.testing.assert_close(model(_dense(clouds)), model(Batch.from_data_list(clouds)))

    def test_single_data_without_batch(self, name):
        model = _build(name, 3, dtype=torch.float64).eval()
        cloud = _clouds([30], 0, dtype=torch.float64)[0]
        torch.testing.assert_close(model(cloud), model(Batch.from_data_list([cloud])))

    def test_gradients_reach_pos_and_x(self, name):
        model = _build(name, 6)
        batch = Batch.from_data_list(_clouds(SIZES, 3))
        batch.pos.requires_grad_(True)
        batch.x.requires_grad_(True)
        model(batch).sum().backward()
        for tensor in (batch.pos, batch.x):
            assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
        assert all(p.grad is not None for p in model.parameters())

    def test_errors(self, name):
        model = _build(name, 6)
        with pytest.raises(ValueError, match=r"expects dense points of shape \(B, N, 6\), but got \(2, 10, 3\)"):
            model(torch.randn(2, 10, 3))
        with pytest.raises(ValueError, match=r"expects dense points of shape \(B, N, 6\)"):
            model(torch.randn(10, 6))
        with pytest.raises(ValueError, match=r"data.pos of shape \(N, 3\)"):
            model(Data(pos=torch.randn(10, 2), x=torch.randn(10, 4)))
        with pytest.raises(ValueError, match="built for in_channels=6, but the data has 5 point channels"):
            model(Data(pos=torch.randn(10, 3), x=torch.randn(10, 2)))
        with pytest.raises(ValueError, match=r"data.x of shape \(N, F\) = \(10, F\)"):
            model(Data(pos=torch.randn(10, 3), x=torch.randn(9, 3)))
        with pytest.raises(TypeError, match="a dense tensor .* or a PyG Data/Batch with `pos`"):
            model([torch.randn(10, 6)])
        with pytest.raises(TypeError, match="floating-point points"):
            model(torch.zeros(2, 10, 6, dtype=torch.long))


class TestConstructionErrors:
    def test_errors(self):
        with pytest.raises(ValueError, match="`in_channels` should be an int >= 1"):
            PointNet(0, 3)
        with pytest.raises(ValueError, match="`hidden` should hold at least one width"):
            PointNet(3, 3, hidden=())
        with pytest.raises(ValueError, match="`k` should be an int >= 1"):
            DGCNN(3, 3, k=0)
        with pytest.raises(ValueError, match="`in_channels` should be an int >= 3"):
            PointNet2(2, 3)
        with pytest.raises(ValueError, match="one entry per set abstraction"):
            PointNet2(3, 3, ratios=(0.5,))
        with pytest.raises(ValueError, match=r"`ratios` should be in the interval \(0.0, 1.0\]"):
            PointNet2(3, 3, ratios=(0.5, 1.5))


class TestInvariance:
    @pytest.mark.parametrize("name", ["PointNet", "DGCNN"])
    def test_point_order_does_not_matter(self, name):
        model = _build(name, 6, dtype=torch.float64).eval()
        clouds = _clouds(SIZES, 3, dtype=torch.float64)
        gen = torch.Generator().manual_seed(1)
        shuffled = []
        for data in clouds:
            perm = torch.randperm(data.num_nodes, generator=gen)
            shuffled.append(Data(pos=data.pos[perm], x=data.x[perm]))
        expected = model(Batch.from_data_list(clouds))
        torch.testing.assert_close(model(Batch.from_data_list(shuffled)), expected)
        if name == "PointNet":
            dense = _dense(_clouds([16, 16], 3, dtype=torch.float64))
            perm = torch.randperm(16, generator=gen)
            torch.testing.assert_close(model(dense[:, perm]), model(dense))


def _sphere_vs_cube(num_clouds: int, num_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_clouds) % 2
    sphere = torch.randn(num_clouds, num_points, 3, generator=gen)
    sphere = sphere / sphere.norm(dim=-1, keepdim=True)
    cube = torch.rand(num_clouds, num_points, 3, generator=gen) * 2 - 1
    face = torch.randint(0, 3, (num_clouds, num_points), generator=gen)
    side = torch.randint(0, 2, (num_clouds, num_points), generator=gen).float() * 2 - 1
    cube.scatter_(-1, face[..., None], side[..., None])  # one coordinate on a face: points on the surface
    points = torch.where(labels[:, None, None].bool(), cube, sphere)
    return points, labels


class TestTraining:
    @pytest.mark.parametrize("name", list(MODELS))
    def test_loss_decreases_on_sphere_vs_cube(self, name):
        torch.manual_seed(0)
        model = {
            "PointNet": lambda: PointNet(3, 2, hidden=(32, 64), head=(32,), dropout=0.0),
            "DGCNN": lambda: DGCNN(3, 2, k=8, hidden=(16, 32), embed=64, head=(32,), dropout=0.0),
            "PointNet2": lambda: PointNet2(3, 2, radii=(0.5, 1.0), max_neighbors=(8, 8), dropout=0.0),
        }[name]()
        points, labels = _sphere_vs_cube(8, 48, seed=0)
        pyg = name != "PointNet"  # PointNet trains on the dense path, the others on PyG batches
        inpt = Batch.from_data_list([Data(pos=p) for p in points]) if pyg else points
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(12):
            loss = nn.functional.cross_entropy(model(inpt), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


class TestAttribution:
    def test_zennit_relevance_on_dense_pointnet(self):
        model = _build("PointNet", 6).train()
        points = torch.randn(4, 32, 6)
        labels = torch.tensor([0, 1, 2, 0])
        rel = relevance(model, points, labels, backend="zennit")
        assert rel.shape == points.shape and torch.isfinite(rel).all() and rel.abs().sum() > 0
        assert model.training  # restored

    def test_fast_engine_agrees_with_zennit_on_dense_pointnet(self):
        # The dense PointNet path runs only supported leaves and routing operations.
        model = _build("PointNet", 6, dtype=torch.float64)
        points = torch.randn(3, 32, 6, dtype=torch.float64)
        labels = torch.tensor([0, 1, 2])
        reference = relevance(model, points, labels, backend="zennit")
        torch.testing.assert_close(relevance(model, points, labels, backend="fast"), reference, rtol=1e-9, atol=1e-12)


def test_core_package_does_not_import_models():
    # Static, every import statement outside models/ resolved to absolute names (a subprocess would cost seconds).
    import ast
    from pathlib import Path

    import reldrop_transforms

    root = Path(reldrop_transforms.__file__).parent
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if parts[0] == "models":
            continue
        package = ["reldrop_transforms", *parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + (node.module.split(".") if node.module else []))
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            assert not any(name.startswith("reldrop_transforms.models") for name in names), (path, names)
