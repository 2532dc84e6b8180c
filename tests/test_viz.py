"""reldrop_transforms.viz: figures and PNGs of a batch, its relevance and its mask (images and point clouds)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from reldrop_transforms import viz  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _images(b=3, c=3, h=16, w=16):
    g = torch.Generator().manual_seed(0)
    images = torch.randn((b, c, h, w), generator=g)
    rel = torch.randn((b, c, h, w), generator=g)
    mask = torch.rand((b, h, w), generator=g) < 0.3
    return images, rel, mask


def _clouds(b=2, n=40, c=3):
    g = torch.Generator().manual_seed(0)
    points = torch.randn((b, n, c), generator=g)
    rel = torch.randn((b, n), generator=g)
    mask = torch.rand((b, n), generator=g) < 0.4
    return points, rel, mask


def _check_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_core_package_does_not_import_viz_or_matplotlib():
    code = (
        "import sys, reldrop_transforms, reldrop_transforms.functional, reldrop_transforms.attribution; "
        "print('reldrop_transforms.viz' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"reldrop-transforms\[viz\]"):
        viz.plot_image_relevance(*_images())


class TestPlotImageRelevance:
    def test_returns_a_figure_with_all_columns(self):
        images, rel, mask = _images()
        fig = viz.plot_image_relevance(images, rel, mask, labels=torch.tensor([0, 1, 2]), class_names=["a", "b", "c"],
                                       title="t")
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 3 * 4

    def test_columns_follow_the_data(self):
        images, rel, _ = _images()
        assert len(viz.plot_image_relevance(images).axes) == 3
        assert len(viz.plot_image_relevance(images, rel).axes) == 3 * 2
        assert len(viz.plot_image_relevance(images, rel.sum(1), max_samples=2).axes) == 2 * 2

    @pytest.mark.parametrize("channels", [1, 3])
    def test_writes_a_png(self, tmp_path, channels):
        images, rel, mask = _images(c=channels)
        path = tmp_path / "sub" / "images.png"
        fig = viz.plot_image_relevance(images, rel, mask.unsqueeze(1), mean=[0.5] * channels, std=[0.2] * channels,
                                       path=path)
        assert isinstance(fig, Figure)
        _check_png(path)

    def test_does_not_modify_inputs(self):
        images, rel, mask = _images()
        versions = (images._version, rel._version, mask._version)
        copies = (images.clone(), rel.clone(), mask.clone())
        viz.plot_image_relevance(images, rel, mask, mean=[0.1, 0.2, 0.3], std=[1.0, 1.0, 1.0])
        assert (images._version, rel._version, mask._version) == versions
        assert torch.equal(images, copies[0]) and torch.equal(rel, copies[1]) and torch.equal(mask, copies[2])

    def test_flat_relevance_is_fine(self):
        images, _, mask = _images()
        viz.plot_image_relevance(images, torch.zeros_like(images), mask)

    @pytest.mark.parametrize(
        "shape",
        [(3, 16, 16), (2, 2, 16, 16), (2, 4, 16, 16), (0, 3, 16, 16)],
    )
    def test_bad_image_shapes(self, shape):
        with pytest.raises(ValueError, match="plot_image_relevance expects"):
            viz.plot_image_relevance(torch.zeros(shape))

    def test_bad_relevance_and_mask_shapes(self):
        images, rel, mask = _images()
        with pytest.raises(ValueError, match="relevance of shape"):
            viz.plot_image_relevance(images, rel[:, :, :8])
        with pytest.raises(ValueError, match="mask of shape"):
            viz.plot_image_relevance(images, rel, mask[:2])
        with pytest.raises(ValueError, match="mean and std"):
            viz.plot_image_relevance(images, mean=[0.1, 0.2], std=[1.0, 1.0])
        with pytest.raises(ValueError, match="labels"):
            viz.plot_image_relevance(images, labels=[0])
        with pytest.raises(ValueError, match="max_samples"):
            viz.plot_image_relevance(images, max_samples=0)

    def test_bad_types(self):
        with pytest.raises(TypeError, match="images should be a torch.Tensor"):
            viz.plot_image_relevance([[0.0]])


class TestPlotPointRelevance:
    def test_returns_a_figure(self):
        points, rel, mask = _clouds()
        fig = viz.plot_point_relevance(points, rel, mask, labels=[0, 1], class_names=["a", "b"], title="t")
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 2 * 2

    def test_rows_follow_the_data(self):
        points, rel, mask = _clouds(b=3)
        assert len(viz.plot_point_relevance(points).axes) == 3
        assert len(viz.plot_point_relevance(points, mask=mask).axes) == 3
        assert len(viz.plot_point_relevance(points, rel, mask, max_samples=2).axes) == 4

    def test_writes_a_png_with_per_channel_relevance(self, tmp_path):
        points, _, mask = _clouds(c=6)
        path = tmp_path / "points.png"
        fig = viz.plot_point_relevance(points, torch.randn(points.shape), mask, path=path)
        assert isinstance(fig, Figure)
        _check_png(path)

    def test_all_dropped_and_none_dropped(self, tmp_path):
        points, rel, mask = _clouds()
        mask[0] = True
        mask[1] = False
        viz.plot_point_relevance(points, rel, mask, path=tmp_path / "edge.png")
        _check_png(tmp_path / "edge.png")

    def test_pyg_batch_and_lists(self, tmp_path):
        pyg = pytest.importorskip("torch_geometric")
        from torch_geometric.data import Batch, Data

        clouds = [torch.randn(30, 3), torch.randn(50, 3)]
        batch = Batch.from_data_list([Data(pos=c) for c in clouds])
        rel = torch.randn(80, 3)
        mask = torch.rand(80) < 0.5
        fig = viz.plot_point_relevance(batch, rel, mask, path=tmp_path / "pyg.png")
        assert isinstance(fig, Figure) and len(fig.axes) == 4
        _check_png(tmp_path / "pyg.png")
        fig = viz.plot_point_relevance(clouds, [torch.randn(30), torch.randn(50)], [torch.zeros(30, dtype=torch.bool),
                                                                                    torch.ones(50, dtype=torch.bool)])
        assert len(fig.axes) == 4
        single = viz.plot_point_relevance(Data(pos=clouds[0]), torch.randn(30), torch.rand(30) < 0.5)
        assert len(single.axes) == 2
        del pyg

    @pytest.mark.parametrize("shape", [(40, 3), (2, 40, 2), (2, 40)])
    def test_bad_point_shapes(self, shape):
        with pytest.raises(ValueError, match="plot_point_relevance expects points"):
            viz.plot_point_relevance(torch.zeros(shape))

    def test_bad_relevance_and_mask_shapes(self):
        points, rel, mask = _clouds()
        with pytest.raises(ValueError, match="relevance of shape"):
            viz.plot_point_relevance(points, rel[:, :10])
        with pytest.raises(ValueError, match="relevance of shape"):
            viz.plot_point_relevance(points, rel.reshape(-1))
        with pytest.raises(ValueError, match="mask of shape"):
            viz.plot_point_relevance(points, rel, mask.unsqueeze(-1))
        with pytest.raises(ValueError, match="one tensor per cloud"):
            viz.plot_point_relevance(list(points), [rel[0]])
        with pytest.raises(ValueError, match="empty batch"):
            viz.plot_point_relevance(torch.zeros(0, 10, 3))

    def test_bad_types(self):
        with pytest.raises(TypeError, match="expects a dense tensor"):
            viz.plot_point_relevance("points")


def test_save_png_uses_agg_whatever_the_figure(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    path = viz.save_png(fig, tmp_path / "deep" / "plot.png", dpi=50)
    _check_png(path)
