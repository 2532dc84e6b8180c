"""Tests of RelevanceErasing2d, relevance-guided Random Erasing (the published Block/Patch variants) as a
torchvision transforms.v2 batch transform.

The transform is compared end-to-end with the public pieces run by hand from a generator seeded like the
transform's: the coins (when ``p < 1``), the relevance of the selected samples summed over channels, and
``relevance_erasing_mask`` (itself tested against per-sample loops in tests/functional/test_erasing.py).
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

import reldrop_transforms
from reldrop_transforms import RelevanceErasing2d
from reldrop_transforms.attribution import relevance
from reldrop_transforms.functional import relevance_erasing_mask, sample_erasing_sizes

from helpers import assert_filled, reference_coins, seeded_transform

# Sizes that always fit a 12x12 image at the first try (h <= round(sqrt(0.3 * 2) * 12) = 9): every selected
# sample is erased.
ALWAYS_FITS = {"scale": (0.1, 0.3), "ratio": (0.5, 2.0)}


def transform(model, device, **kwargs):
    """A RelevanceErasing2d on ``model`` with a generator on ``device`` seeded with ``kwargs.pop("seed", 0)``."""
    return seeded_transform(RelevanceErasing2d, model, device, **kwargs)


def reference_mask(model, images, labels, *, p, seed, **kwargs):
    """Coins ``U < p`` (none drawn at ``p = 1``), then the draws of the whole batch as ``relevance_erasing_mask``
    makes them (sizes, then centres: the rule for p), relevance of the selected samples summed over channels, then
    ``relevance_erasing_mask`` on their rows of the draws."""
    batch_size, _, height, width = images.shape
    g = torch.Generator(device=images.device).manual_seed(seed)
    index = reference_coins(batch_size, p, g, images.device)
    patches = kwargs.get("num_patches", 1)
    sizes = torch.rand(batch_size, patches, 10, 2, generator=g, device=images.device)
    centres = torch.rand(batch_size, patches, 2, generator=g, device=images.device)
    mask = torch.zeros(batch_size, height, width, dtype=torch.bool, device=images.device)
    if index.numel() == 0:
        return mask, index
    targets = None if labels is None else labels[index]
    rel = relevance(model, images[index], targets).sum(1)
    mask[index] = relevance_erasing_mask(rel, draws=(sizes[index], centres[index]), **kwargs)
    return mask, index


class TestRelevanceErasing2d:
    # -- the mask and the fill ---------------------------------------------------------------------------------

    @pytest.mark.parametrize("kwargs, seed", [
        ({}, 0),
        ({"top_k": 5}, 1),
        ({"num_patches": 3, "top_k": 8}, 2),
        ({"scale": (0.05, 0.2), "ratio": (0.5, 2.0)}, 3),
        ({"num_patches": 2, "top_k": 1, "scale": (0.2, 0.6)}, 4),
    ])
    def test_mask_matches_functional(self, model, batch, device, kwargs, seed):
        images, labels = batch
        out_images, out_labels = transform(model, device, p=1.0, value=-3.5, seed=seed, **kwargs)(images, labels)
        mask, _ = reference_mask(model, images, labels, p=1.0, seed=seed, **kwargs)
        assert bool(mask.any()) and bool((~mask).any())  # not vacuous
        assert_filled(out_images, images, mask, -3.5)
        assert out_labels is labels

    def test_top1_relevant_pixel_erased(self, model, make_batch, device):
        # top_k = 1: whenever a sample is erased, its most relevant pixel (channel-summed relevance) is erased.
        images, labels = make_batch(batch_size=32, device=device, seed=1)
        for num_patches in (1, 2):
            out, _ = transform(model, device, p=1.0, value=100.0, num_patches=num_patches, seed=3)(images, labels)
            erased = (out == 100.0).all(1)  # (B, H, W)
            rel = relevance(model, images, labels).sum(1).flatten(1)
            top = rel.argmax(1)
            rows = erased.flatten(1).any(1)
            assert int(rows.sum()) >= 28  # almost every sample has a fitting rectangle
            assert bool(erased.flatten(1)[torch.arange(32, device=device), top][rows].all())

    def test_output_shape_dtype_device(self, model, batch, device):
        images, labels = batch
        out_images, out_labels = transform(model, device, p=1.0)(images, labels)
        assert out_images.shape == images.shape and out_images.dtype == images.dtype
        assert out_images.device == images.device and type(out_images) is torch.Tensor
        assert out_labels is labels

    def test_erased_region_is_a_rectangle(self, model, batch, device):
        images, labels = batch
        out, _ = transform(model, device, p=1.0, value=50.0, **ALWAYS_FITS)(images, labels)
        erased = (out == 50.0).all(1)
        for b in range(images.shape[0]):
            rows, cols = erased[b].any(1).nonzero().flatten(), erased[b].any(0).nonzero().flatten()
            assert rows.numel() > 0
            assert int(erased[b].sum()) == rows.numel() * cols.numel()  # the bounding box is fully erased
            assert rows.numel() == int(rows[-1] - rows[0]) + 1 and cols.numel() == int(cols[-1] - cols[0]) + 1

    def test_float64(self, make_model, make_batch, device):
        model = make_model().double().to(device)
        images, labels = make_batch(device=device, dtype=torch.float64)
        out, _ = transform(model, device, p=1.0, value=1.25)(images, labels)
        mask, _ = reference_mask(model, images, labels, p=1.0, seed=0)
        assert out.dtype == torch.float64
        assert_filled(out, images, mask, 1.25)

    def test_per_channel_value(self, model, batch, device):
        images, labels = batch
        value = (0.5, -1.0, 2.0)
        out, _ = transform(model, device, p=1.0, value=value)(images, labels)
        mask, _ = reference_mask(model, images, labels, p=1.0, seed=0)
        assert_filled(out, images, mask, value)
        b, i, j = mask.nonzero()[0].tolist()
        assert out[b, :, i, j].tolist() == list(value)
        single, _ = transform(model, device, p=1.0, value=[4.0])(images, labels)
        assert_filled(single, images, mask, 4.0)

    # -- the per-sample coin ----------------------------------------------------------------------------------

    def test_p_half_matches_reference(self, model, make_batch, device):
        images, labels = make_batch(batch_size=16, device=device, seed=3)
        out, _ = transform(model, device, p=0.5, value=7.0, seed=5, top_k=3)(images, labels)
        mask, index = reference_mask(model, images, labels, p=0.5, seed=5, top_k=3)
        selected = torch.zeros(16, dtype=torch.bool, device=device)
        selected[index] = True
        assert 0 < int(selected.sum()) < 16
        assert_filled(out, images, mask, 7.0)
        assert torch.equal(out[~selected], images[~selected])  # unselected samples are unchanged

    def test_p_selects_about_p(self, model, make_batch, device):
        n = 200
        images, labels = make_batch(batch_size=n, size=12, device=device, seed=4)
        out, _ = transform(model, device, p=0.3, value=7.0, seed=9, **ALWAYS_FITS)(images, labels)
        changed = (out != images).flatten(1).any(1)
        coins = torch.rand(n, generator=torch.Generator(device=device).manual_seed(9), device=device) < 0.3
        assert torch.equal(changed, coins)  # exactly the selected samples are erased (every rectangle fits)
        assert abs(int(changed.sum()) - n * 0.3) <= 5 * math.sqrt(n * 0.21)

    def test_erased_area_matches_sizes(self, model, make_batch, device):
        # p = 1 on a 32x32 batch: each sample's erased area is the clipped h x w rectangle drawn first.
        images, labels = make_batch(batch_size=64, size=32, device=device, seed=6)
        out, _ = transform(model, device, p=1.0, value=9.0, seed=6)(images, labels)
        sizes, valid = sample_erasing_sizes(64, 32, 32, generator=torch.Generator(device=device).manual_seed(6),
                                            device=device)
        counts = (out == 9.0).all(1).flatten(1).sum(1)
        assert torch.equal(counts > 0, valid[:, 0])
        assert bool((counts <= sizes[:, 0].prod(-1) * valid[:, 0]).all())  # clipping only removes pixels

    # -- reproducibility, inputs -------------------------------------------------------------------------------

    def test_tv_tensor_image(self, model, batch, device):
        images, labels = batch
        out, out_labels = transform(model, device, p=1.0, value=2.0)(tv_tensors.Image(images), labels)
        assert isinstance(out, tv_tensors.Image) and out_labels is labels
        mask, _ = reference_mask(model, images, labels, p=1.0, seed=0)
        assert_filled(out.as_subclass(torch.Tensor), images, mask, 2.0)

    def test_predicted_class_without_labels(self, model, batch, device):
        images, _ = batch
        out = transform(model, device, p=1.0, value=3.0, labels_getter=None)(images)
        mask, _ = reference_mask(model, images, None, p=1.0, seed=0)
        assert_filled(out, images, mask, 3.0)

    def test_dict_and_passthrough(self, model, batch, device):
        images, labels = batch
        sample = {"image": images, "labels": labels, "name": "x"}
        out = transform(model, device, p=1.0, value=3.0)(sample)
        mask, _ = reference_mask(model, images, labels, p=1.0, seed=0)
        assert_filled(out["image"], images, mask, 3.0)
        assert out["labels"] is labels and out["name"] == "x"

    def test_compose_with_cutmix(self, model, batch, device, num_classes):
        images, labels = batch
        pipeline = v2.Compose([transform(model, device, p=1.0, value=4.0), v2.CutMix(num_classes=num_classes)])
        torch.manual_seed(0)
        out_images, out_labels = pipeline(images, labels)
        assert out_images.shape == images.shape and out_labels.shape == (8, num_classes)

    def test_public_and_repr_and_pickle(self, model, batch, device):
        assert reldrop_transforms.RelevanceErasing2d is RelevanceErasing2d
        t = transform(model, device, p=1.0, top_k=3, num_patches=2, scale=(0.1, 0.2))
        assert isinstance(t, v2.Transform)
        assert (t.scale, t.ratio, t.top_k, t.num_patches) == ((0.1, 0.2), (0.3, 3.3), 3, 2)
        assert "RelevanceErasing2d(" in repr(t)
        images, labels = batch
        clone = pickle.loads(pickle.dumps(t))
        assert torch.equal(clone(images, labels)[0], t(images, labels)[0])

    # -- errors ------------------------------------------------------------------------------------------------

    @pytest.mark.parametrize("name, bad, error, match", [
        ("scale", (0.4, 0.02), ValueError, r"`scale` should be an increasing pair in \[0.0, 1.0\], but got "
                                           r"\(0.4, 0.02\) instead"),
        ("scale", (0.1, 1.2), ValueError, r"`scale` should be an increasing pair in \[0.0, 1.0\]"),
        ("scale", (-0.1, 0.3), ValueError, r"`scale` should be an increasing pair"),
        ("scale", 0.3, TypeError, r"`scale` should be a sequence \(min, max\)"),
        ("scale", (0.1,), TypeError, r"`scale` should be a sequence \(min, max\)"),
        ("scale", "01", TypeError, r"`scale` should be a sequence \(min, max\)"),
        ("ratio", (3.3, 0.3), ValueError, r"`ratio` should be an increasing pair in >= 1e-12, but got \(3.3, 0.3\)"),
        ("ratio", (0.0, 2.0), ValueError, r"`ratio` should be an increasing pair in >= 1e-12"),
        ("ratio", None, TypeError, r"`ratio` should be a sequence \(min, max\)"),
        ("ratio", (1.0, float("inf")), ValueError, r"`ratio` should be a pair of finite numbers, but got \(1.0, inf\)"),
        ("ratio", (0.5, float("nan")), ValueError, r"`ratio` should be an increasing pair in >= 1e-12"),
        ("top_k", 0, ValueError, r"top_k should be an integer >= 1, but got 0 instead"),
        ("top_k", -2, ValueError, r"top_k should be an integer >= 1, but got -2"),
        ("top_k", 1.0, TypeError, r"top_k should be an integer >= 1, but got float 1.0"),
        ("top_k", True, TypeError, r"top_k should be an integer >= 1, but got bool True"),
        ("num_patches", 0, ValueError, r"num_patches should be an integer >= 1, but got 0 instead"),
        ("num_patches", 2.5, TypeError, r"num_patches should be an integer >= 1, but got float 2.5"),
        ("num_patches", True, TypeError, r"num_patches should be an integer >= 1, but got bool True"),
        ("p", 1.5, ValueError, r"`p` should be in the interval \[0.0, 1.0\], but got"),
        ("p", float("nan"), ValueError, r"`p` should be in the interval \[0.0, 1.0\], but got"),
        ("value", "0", TypeError, r"value should be a number or a sequence of numbers"),
        ("generator", 0, TypeError, r"generator should be a torch.Generator"),
        ("backend", "captum", ValueError, r"backend should be one of"),
    ])
    def test_constructor_errors(self, name, bad, error, match):
        with pytest.raises(error, match=match):
            RelevanceErasing2d(nn.Linear(2, 2), **{name: bad})

    def test_model_not_a_module(self):
        with pytest.raises(TypeError, match="model should be a torch.nn.Module"):
            RelevanceErasing2d(lambda x: x)

    def test_integral_scalars_for_counts(self):
        """``numpy`` / ``torch`` integer scalars are integers (was: refused, 'should be an integer >= 1, but got
        np.int64(2)')."""
        import numpy as np

        t = RelevanceErasing2d(nn.Linear(2, 2), top_k=np.int64(2), num_patches=np.int32(3))
        assert (t.top_k, t.num_patches) == (2, 3) and type(t.top_k) is int and type(t.num_patches) is int
