"""The demo (examples/demo.py) in --quick mode, and the synthetic data generator it trains on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

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


@pytest.mark.slow
def test_demo_quick_run(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--quick", "--no-progress", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert str(out.resolve()) in proc.stdout

    png = out / "relevance.png"
    assert png.is_file() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = plt.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert float(pixels[..., :3].std()) > 0.01  # not a blank canvas

    results = (out / "results.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(rows) == 2
    assert rows[0].startswith("| baseline") and rows[1].startswith("| RelDrop")
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        numbers = [float(cell) for cell in cells[1:]]
        assert len(numbers) == 6
        accuracies, seconds = numbers[:3], numbers[3]
        assert all(0.0 <= acc <= 100.0 for acc in accuracies)
        assert seconds > 0.0
    assert re.search(r"Total wall time of the run: \d+\.\d s", results)
