"""The demo (examples/demo.py) in --quick mode, the synthetic data generator it trains on, and its split of
scikit-learn's digits (examples/digits.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import digits  # noqa: E402
import synthetic  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two 1-D tensors."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


class TestSyntheticSplit:
    def test_shapes_and_dtypes(self):
        split = synthetic.make_split(64, seed=0)
        assert split.images.shape == (64, 3, 32, 32) and split.images.dtype == torch.float32
        assert split.labels.shape == (64,) and split.labels.dtype == torch.int64
        assert split.masks.shape == (64, 32, 32) and split.masks.dtype == torch.bool
        assert split.marker_present.dtype == torch.bool and split.marker_labels.dtype == torch.int64
        assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < len(synthetic.CLASSES)
        assert len(split) == 64

    @pytest.mark.parametrize("train", [True, False])
    def test_deterministic_for_a_seed(self, train):
        a = synthetic.make_split(50, seed=3, train=train)
        b = synthetic.make_split(50, seed=3, train=train)
        for name in ("images", "labels", "masks", "marker_present", "marker_labels"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name

    def test_different_seeds_differ(self):
        a = synthetic.make_split(50, seed=0)
        b = synthetic.make_split(50, seed=1)
        assert not torch.equal(a.images, b.images)
        assert not torch.equal(a.labels, b.labels)

    def test_masks_non_empty_and_on_the_object(self):
        split = synthetic.make_split(500, seed=0)
        sizes = split.masks.sum((1, 2))
        assert int(sizes.min()) > 10
        assert not (split.masks & synthetic.marker_region()).any()  # the marker is never part of the object

    def test_all_classes_present(self):
        split = synthetic.make_split(500, seed=0)
        assert torch.bincount(split.labels, minlength=len(synthetic.CLASSES)).min() > 50

    def test_shortcut_in_train_not_in_test(self):
        n = 2000
        train = synthetic.make_split(n, seed=0, train=True, shortcut_p=0.9)
        test = synthetic.make_split(n, seed=1, train=False, shortcut_p=0.9)
        # Read the marker from the pixels, not from the generator's bookkeeping.
        train_marker = synthetic.marker_class(train.images)
        test_marker = synthetic.marker_class(test.images)
        assert torch.equal(train_marker, train.marker_labels)
        assert torch.equal(test_marker, test.marker_labels)
        assert abs(float(train.marker_present.float().mean()) - 0.9) < 0.03
        assert abs(float(test.marker_present.float().mean()) - 0.9) < 0.03
        # Training split: wherever the marker is present, it names the class.
        present = train_marker >= 0
        assert bool((train_marker[present] == train.labels[present]).all())
        # Test split: the marker's class is independent of the label (agreement at chance, no correlation).
        present = test_marker >= 0
        agreement = float((test_marker[present] == test.labels[present]).float().mean())
        assert abs(agreement - 1 / len(synthetic.CLASSES)) < 0.05
        one_hot_label = torch.nn.functional.one_hot(test.labels[present], len(synthetic.CLASSES))
        one_hot_marker = torch.nn.functional.one_hot(test_marker[present], len(synthetic.CLASSES))
        for k in range(len(synthetic.CLASSES)):
            assert abs(_correlation(one_hot_label[:, k], one_hot_marker[:, k])) < 0.1
            assert _correlation(
                torch.nn.functional.one_hot(train.labels[train_marker >= 0], len(synthetic.CLASSES))[:, k],
                torch.nn.functional.one_hot(train_marker[train_marker >= 0], len(synthetic.CLASSES))[:, k],
            ) > 0.99

    def test_no_marker_when_shortcut_p_is_zero(self):
        split = synthetic.make_split(200, seed=0, train=False, shortcut_p=0.0)
        assert not split.marker_present.any()
        assert bool((synthetic.marker_class(split.images) == -1).all())

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="shortcut_p"):
            synthetic.make_split(4, shortcut_p=1.5)
        with pytest.raises(ValueError, match="n should be"):
            synthetic.make_split(-1)

    def test_dataset_wrapper(self):
        split = synthetic.make_split(10, seed=0)
        dataset = synthetic.ShapesDataset(split.images, split.labels)
        assert len(dataset) == 10
        image, label = dataset[3]
        assert torch.equal(image, split.images[3]) and int(label) == int(split.labels[3])
        with pytest.raises(ValueError, match="labels"):
            synthetic.ShapesDataset(split.images, split.labels[:5])


class TestPointSplit:
    def test_shapes_and_dtypes(self):
        split = synthetic.make_point_split(40, seed=0, num_points=64, cluster_size=8)
        assert split.points.shape == (40, 64, 3) and split.points.dtype == torch.float32
        assert split.labels.shape == (40,) and split.labels.dtype == torch.int64
        assert split.object_points.shape == (40, 64) and split.object_points.dtype == torch.bool
        assert split.cluster_present.dtype == torch.bool and split.cluster_labels.dtype == torch.int64
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < len(synthetic.SHAPES)
        assert len(split) == 40
        assert bool(torch.isfinite(split.points).all())

    @pytest.mark.parametrize("train", [True, False])
    def test_deterministic_for_a_seed(self, train):
        a = synthetic.make_point_split(30, seed=5, train=train, num_points=48)
        b = synthetic.make_point_split(30, seed=5, train=train, num_points=48)
        for name in ("points", "labels", "object_points", "cluster_present", "cluster_labels", "distinct_points"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name

    def test_different_seeds_differ(self):
        a = synthetic.make_point_split(30, seed=0, num_points=48)
        b = synthetic.make_point_split(30, seed=1, num_points=48)
        assert not torch.equal(a.points, b.points)

    def test_cluster_points_and_object_points(self):
        split = synthetic.make_point_split(400, seed=0, num_points=64, cluster_size=8)
        # Clouds with a cluster have exactly cluster_size non-object points, the others none.
        counts = (~split.object_points).sum(1)
        assert torch.equal(counts, split.cluster_present.long() * 8)
        # Cluster points sit near their class's centre; object points stay inside radius 1.7.
        centres = synthetic.CLUSTER_CENTRES[split.cluster_labels.clamp(min=0)]  # (n, 3)
        distance = (split.points - centres.unsqueeze(1)).norm(dim=-1)
        assert float(distance[~split.object_points].max()) < 0.6
        assert float(split.points[split.object_points].norm(dim=-1).max()) < 1.8
        # Varying density: the number of distinct underlying points differs between clouds.
        assert int(split.distinct_points.min()) >= 16 and int(split.distinct_points.max()) <= 64
        assert split.distinct_points.unique().numel() > 10

    def test_all_classes_present(self):
        split = synthetic.make_point_split(500, seed=0, num_points=32)
        assert torch.bincount(split.labels, minlength=len(synthetic.SHAPES)).min() > 50

    def test_shortcut_in_train_not_in_test(self):
        train = synthetic.make_point_split(2000, seed=0, train=True, num_points=32)
        test = synthetic.make_point_split(2000, seed=1, train=False, num_points=32)
        assert abs(float(train.cluster_present.float().mean()) - 0.9) < 0.03
        present = train.cluster_present
        assert bool((train.cluster_labels[present] == train.labels[present]).all())
        assert bool((train.cluster_labels[~present] == -1).all())
        present = test.cluster_present
        agreement = float((test.cluster_labels[present] == test.labels[present]).float().mean())
        assert abs(agreement - 1 / len(synthetic.SHAPES)) < 0.05

    def test_no_cluster_when_shortcut_p_is_zero(self):
        split = synthetic.make_point_split(50, seed=0, shortcut_p=0.0, num_points=32)
        assert bool(split.object_points.all()) and not split.cluster_present.any()

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="shortcut_p"):
            synthetic.make_point_split(4, shortcut_p=-0.1)
        with pytest.raises(ValueError, match="n should be"):
            synthetic.make_point_split(-1)
        with pytest.raises(ValueError, match="cluster_size"):
            synthetic.make_point_split(4, num_points=16, cluster_size=16)
        with pytest.raises(ValueError, match="num_points"):
            synthetic.make_point_split(4, num_points=2)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    """The labels of all 1,797 digits."""
    return digits.load()[1]


class TestDigitsSplit:
    def test_load(self):
        images, labels = digits.load()
        assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
        assert labels.shape == (1797,) and labels.dtype == torch.int64
        assert float(images.min()) == 0.0 and float(images.max()) == 1.0
        assert torch.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]

    def test_fifty_per_class_disjoint_and_complete(self, labels):
        train, test = digits.split_per_class(labels, digits.PER_CLASS)
        assert torch.bincount(labels[train], minlength=10).tolist() == [50] * 10
        assert torch.equal(torch.bincount(labels[test], minlength=10), torch.bincount(labels) - 50)
        assert len(train) == 500 and len(test) == 1297
        assert not set(train.tolist()) & set(test.tolist())
        assert sorted(train.tolist() + test.tolist()) == list(range(1797))

    def test_deterministic_and_fixed_by_its_seed(self, labels):
        train, test = digits.split_per_class(labels, digits.PER_CLASS)
        again = digits.split_per_class(labels, digits.PER_CLASS)
        assert torch.equal(train, again[0]) and torch.equal(test, again[1])
        other = digits.split_per_class(labels, digits.PER_CLASS, seed=digits.SPLIT_SEED + 1)
        assert set(other[0].tolist()) != set(train.tolist())
        assert torch.bincount(labels[other[0]], minlength=10).tolist() == [50] * 10

    def test_make_splits(self, labels):
        train, test = digits.make_splits(16)
        assert train.images.shape == (500, 1, 16, 16) and test.images.shape == (1297, 1, 16, 16)
        assert len(train) == 500 and len(test) == 1297
        assert torch.equal(train.labels, labels[train.indices]) and torch.equal(test.labels, labels[test.indices])
        assert torch.equal(train.indices, digits.split_per_class(labels, digits.PER_CLASS)[0])
        originals = digits.load()[0]
        assert torch.equal(test.images, digits.upsample(originals[test.indices], 16))
        assert float(train.images.min()) >= 0.0 and float(train.images.max()) <= 1.0
        # Bilinear upsampling keeps each image's mean closely.
        assert torch.allclose(train.images.mean((1, 2, 3)), originals[train.indices].mean((1, 2, 3)), atol=1e-3)

    def test_invalid_arguments(self):
        labels = torch.tensor([0, 0, 0, 1, 1, 1])
        with pytest.raises(ValueError, match="smallest class size 3"):
            digits.split_per_class(labels, 3)
        with pytest.raises(ValueError, match="per_class should be >= 1"):
            digits.split_per_class(labels, 0)
        train, test = digits.split_per_class(labels, 2)
        assert torch.bincount(labels[train]).tolist() == [2, 2] and torch.bincount(labels[test]).tolist() == [1, 1]


def test_demo_does_not_import_sklearn():
    """scikit-learn is loaded by the digits section only: importing the demo (and the package) does not need it."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import demo, reldrop_transforms.viz; "
            "assert 'sklearn' not in sys.modules, 'sklearn was imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


FIGURES = ("accuracy_curves.png", "occlusion.png", "relevance_images.png", "relevance_images_reldrop.png",
           "relevance_points.png", "accuracy_curves_digits.png", "occlusion_digits.png", "relevance_digits.png")
MEAN_SD = re.compile(r"^(-?\d+\.\d+) ± (\d+\.\d+)$")


def _tables(report: str) -> dict[str, list[list[str]]]:
    """The Markdown tables of the report, per ``## `` section: rows of cells, header first."""
    tables: dict[str, list[list[str]]] = {}
    section = None
    for line in report.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("|") and not line.startswith("|---"):
            tables.setdefault(section, []).append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return tables


@pytest.mark.slow
def test_demo_quick_run(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--quick", "--no-progress", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert str(out.resolve()) in proc.stdout

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in FIGURES:
        png = out / name
        assert png.is_file() and png.stat().st_size > 10_000, name
        assert png.read_bytes()[:8] == PNG_SIGNATURE, name
        pixels = plt.imread(png)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200, name
        assert float(pixels[..., :3].std()) > 0.01, name  # not a blank canvas

    report = (out / "report.md").read_text(encoding="utf-8")
    tables = _tables(report)
    image_methods = ["no augmentation", "RandomErasing", "RelevanceDropout2d", "RelevanceErasing2d"]
    expected = {
        "Images": (image_methods, "abs. relevance on object (%)"),
        "Points": (["no augmentation", "random point dropout", "RelevanceDropout3d"], "abs. relevance on object (%)"),
        "Digits": (image_methods, "pixels holding half of abs. relevance (%)"),
    }
    assert [line[3:] for line in report.splitlines() if line.startswith("## ")] == [*expected, "Figures"]
    for section, (methods, relevance_column) in expected.items():
        header, *rows = tables[section]
        assert header[:6] == ["method", "test acc (%)", "final train acc (%)", "s / epoch", "occlusion AUC (%)",
                              relevance_column]
        assert [row[0] for row in rows] == methods
        for row in rows:
            values = []
            for cell in row[1:6]:
                match = MEAN_SD.match(cell)
                assert match, (section, row[0], cell)
                values.append((float(match.group(1)), float(match.group(2))))
            for (mean, sd), column in zip(values, header[1:6]):
                assert sd >= 0.0
                if column == "s / epoch":
                    assert mean > 0.0
                else:
                    assert 0.0 <= mean <= 100.0, (section, row[0], column)
            if section == "Digits":  # half of the relevance needs at least one of the 16x16 pixels, at most half
                assert 100 / 256 - 0.05 <= values[4][0] <= 50.05, row
        # The paragraph after the table is written from the numbers.
        paragraph = report.split(f"## {section}")[1].split("\n\n")[3]
        assert "seed" in paragraph and ("Relevance" in paragraph)
    digits_section = report.split("## Digits")[1].split("## Figures")[0]
    quick = (f"{demo_presets()['dig_per_class']} training images per class ({10 * demo_presets()['dig_per_class']}) "
             f"and {demo_presets()['dig_test']} test images")
    assert "sklearn.datasets.load_digits()" in digits_section and quick in digits_section
    assert "the share of pixels holding half of the absolute relevance" in digits_section.split("\n\n")[3]
    assert re.search(r"Total wall time of the run: \d+\.\d s \(images \d+\.\d s, points \d+\.\d s, "
                     r"digits \d+\.\d s;", report)


def demo_presets() -> dict[str, int]:
    """The demo's quick preset (imported lazily: the demo imports the package)."""
    import demo

    return demo.PRESETS["quick"]


def test_demo_arguments():
    import demo

    args = demo.parse_args(["--quick"])
    assert args.preset == "quick" and args.seeds == demo.PRESETS["quick"]["seeds"]
    args = demo.parse_args(["--long", "--img-epochs", "2"])
    assert args.preset == "long" and args.img_epochs == 2 and args.seeds >= 3
    assert demo.parse_args([]).seeds >= 3
    with pytest.raises(SystemExit):
        demo.parse_args(["--quick", "--long"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--seeds", "0"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--modalities", "audio"])
    assert demo.parse_args([]).modalities == ["images", "points", "digits"]
    args = demo.parse_args(["--modalities", "digits", "--dig-epochs", "3"])
    assert args.modalities == ["digits"] and args.dig_epochs == 3 and args.dig_per_class == digits.PER_CLASS
    with pytest.raises(SystemExit):
        demo.parse_args(["--dig-per-class", "0"])


def test_demo_metrics():
    import demo

    assert demo.area([1.0] * len(demo.FRACTIONS)) == pytest.approx(1.0)
    assert demo.area([0.5] * len(demo.FRACTIONS)) == pytest.approx(0.5)
    rel = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
    assert demo.object_share(rel, torch.tensor([[True, False, True, False]])) == pytest.approx(0.75)
    # Share of the elements holding half of the absolute relevance: one element, all of them, in between.
    assert demo.relevance_spread(torch.tensor([[0.0, 5.0, 0.0, 0.0]])) == pytest.approx(0.25)
    assert demo.relevance_spread(torch.ones(1, 16, 16)) == pytest.approx(0.5)
    assert demo.relevance_spread(torch.tensor([[-3.0, 1.0, 1.0, 1.0]])) == pytest.approx(0.25)  # 3 of 6: half
    assert demo.relevance_spread(torch.tensor([[2.0, -2.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])) == pytest.approx(2 / 8)
    assert demo.relevance_spread(torch.tensor([[4.0, 3.0, 2.0, 1.0]])) == pytest.approx(0.5)  # 4 < 5, 4 + 3 >= 5
    both = torch.stack([torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.ones(4)])
    assert demo.relevance_spread(both) == pytest.approx((0.25 + 0.5) / 2)
