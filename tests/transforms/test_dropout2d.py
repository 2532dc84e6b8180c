"""Tests of RelevanceDropout2d, the RelDrop pixel mask as a torchvision transforms.v2 batch transform."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

import reldrop_transforms
from reldrop_transforms import RelevanceDropout2d, RelevanceErasing2d
from reldrop_transforms.attribution import relevance
from reldrop_transforms.functional import relevance_dropout_mask

from helpers import assert_filled, reference_coins, seeded_transform

# Devices other than the CPU: "meta" always (no data, but a device all the same), "cuda" where present.
OTHER_DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


def transform(model, device, **kwargs):
    """A RelevanceDropout2d on ``model`` with a generator on ``device`` seeded with ``kwargs.pop("seed", 0)``."""
    return seeded_transform(RelevanceDropout2d, model, device, **kwargs)


def reference_mask(model, images, labels, *, alpha, beta, p, seed):
    """The mask built by hand: coins ``U < p`` (none drawn at ``p = 1``), then the noise of the whole batch (none at
    ``alpha = 0``), relevance of the selected samples summed over channels, the mask rule on their rows of the
    noise; all from one generator seeded as the transform's (the rule for ``p`` in transforms/_common.py)."""
    batch_size, _, height, width = images.shape
    g = torch.Generator(device=images.device).manual_seed(seed)
    index = reference_coins(batch_size, p, g, images.device)
    noise = None
    if alpha > 0:
        noise = torch.rand(batch_size, height, width, generator=g, device=images.device, dtype=images.dtype)
    mask = torch.zeros(batch_size, height, width, dtype=torch.bool, device=images.device)
    if index.numel() == 0:
        return mask
    selected = images if p >= 1.0 else images[index]
    targets = None if labels is None else (labels if p >= 1.0 else labels[index])
    rel = relevance(model, selected, targets)
    mask[index] = relevance_dropout_mask(rel.sum(1), alpha, beta, noise=None if noise is None else noise[index])
    return mask


class TestRelevanceDropout2d:
    # -- the mask and the fill ---------------------------------------------------------------------------------

    @pytest.mark.parametrize("alpha, beta, seed", [(0.3, 0.5, 0), (0.5, 0.5, 1), (0.0, 0.3, 2), (1.0, 0.2, 3)])
    def test_mask_matches_relevance_and_rule(self, model, batch, device, alpha, beta, seed):
        images, labels = batch
        t = transform(model, device, alpha=alpha, beta=beta, p=1.0, value=-3.5, seed=seed)
        out_images, out_labels = t(images, labels)
        mask = reference_mask(model, images, labels, alpha=alpha, beta=beta, p=1.0, seed=seed)
        assert bool(mask.any()) and bool((~mask).any())  # the comparison is not vacuous
        assert_filled(out_images, images, mask, -3.5)

    def test_output_shape_dtype_device_and_labels_identity(self, model, batch, device):
        images, labels = batch
        out_images, out_labels = transform(model, device, p=1.0)(images, labels)
        assert out_images.shape == images.shape
        assert out_images.dtype == images.dtype
        assert out_images.device == images.device
        assert type(out_images) is torch.Tensor
        assert out_labels is labels

    def test_float64(self, make_model, make_batch, device):
        model = make_model().double().to(device)
        images, labels = make_batch(device=device, dtype=torch.float64)
        out_images, _ = transform(model, device, p=1.0, value=1.25)(images, labels)
        mask = reference_mask(model, images, labels, alpha=0.3, beta=0.5, p=1.0, seed=0)
        assert out_images.dtype == torch.float64
        assert_filled(out_images, images, mask, 1.25)

    def test_per_channel_value(self, model, batch, device):
        images, labels = batch
        value = (0.5, -1.0, 2.0)
        out_images, _ = transform(model, device, p=1.0, value=value)(images, labels)
        mask = reference_mask(model, images, labels, alpha=0.3, beta=0.5, p=1.0, seed=0)
        assert bool(mask.any())
        assert_filled(out_images, images, mask, value)
        b, i, j = mask.nonzero()[0].tolist()
        assert out_images[b, :, i, j].tolist() == list(value)

    # -- the per-sample coin --------------------------------------------------------------------------------------

    def test_p_half_matches_reference(self, model, make_batch, device):
        images, labels = make_batch(batch_size=16, device=device, seed=3)
        out_images, _ = transform(model, device, p=0.5, value=7.0, seed=5)(images, labels)
        mask = reference_mask(model, images, labels, alpha=0.3, beta=0.5, p=0.5, seed=5)
        selected = mask.flatten(1).any(1)
        assert 0 < int(selected.sum()) < 16
        assert_filled(out_images, images, mask, 7.0)
        assert torch.equal(out_images[~selected], images[~selected])

    def test_p_half_selects_about_half(self, model, make_batch, device):
        n = 200
        images, labels = make_batch(batch_size=n, size=6, device=device, seed=4)
        out_images, _ = transform(model, device, p=0.5, value=7.0, seed=9)(images, labels)
        changed = (out_images != images).flatten(1).any(1)
        # The changed samples are exactly the coins (every selected sample loses at least its top pixel at
        # alpha = 0.3, beta = 0.5), the unchanged ones are untouched.
        coins = torch.rand(n, generator=torch.Generator(device=device).manual_seed(9), device=device) < 0.5
        assert torch.equal(changed, coins)
        assert torch.equal(out_images[~changed], images[~changed])
        assert abs(int(changed.sum()) - n * 0.5) <= 5 * math.sqrt(n * 0.25)

    # -- inputs: tv_tensors, labels, dicts ------------------------------------------------------------------

    def test_tv_tensor_image(self, model, batch, device):
        images, labels = batch
        out_images, out_labels = transform(model, device, p=1.0)(tv_tensors.Image(images), labels)
        assert isinstance(out_images, tv_tensors.Image)
        assert out_labels is labels
        mask = reference_mask(model, images, labels, alpha=0.3, beta=0.5, p=1.0, seed=0)
        assert_filled(out_images.as_subclass(torch.Tensor), images, mask, 0.0)

    def test_soft_labels(self, model, batch, device, num_classes):
        images, labels = batch
        torch.manual_seed(0)
        mixed_images, soft = v2.CutMix(num_classes=num_classes)(images, labels)
        assert soft.shape == (images.shape[0], num_classes) and soft.is_floating_point()
        out_images, out_labels = transform(model, device, p=1.0)(mixed_images, soft)
        assert out_labels is soft
        mask = reference_mask(model, mixed_images, soft, alpha=0.3, beta=0.5, p=1.0, seed=0)
        assert_filled(out_images, mixed_images, mask, 0.0)

    def test_soft_labels_differ_from_hard_labels(self, model, batch, device, num_classes):
        images, labels = batch
        soft = torch.full((images.shape[0], num_classes), 1.0 / num_classes, device=device)
        hard_mask = reference_mask(model, images, labels, alpha=0.0, beta=0.5, p=1.0, seed=0)
        soft_out, _ = transform(model, device, alpha=0.0, p=1.0, value=9.0)(images, soft)
        soft_mask = reference_mask(model, images, soft, alpha=0.0, beta=0.5, p=1.0, seed=0)
        assert_filled(soft_out, images, soft_mask, 9.0)
        assert not torch.equal(soft_mask, hard_mask)  # the labels do drive the attribution

    @pytest.mark.parametrize("batch_transform", ["cutmix", "mixup"])
    @pytest.mark.parametrize("order", ["reldrop_first", "reldrop_last"])
    def test_compose_with_cutmix_mixup(self, model, batch, device, num_classes, batch_transform, order):
        images, labels = batch
        make_mix = {"cutmix": v2.CutMix, "mixup": v2.MixUp}[batch_transform]
        mix = make_mix(num_classes=num_classes)
        reldrop = transform(model, device, p=1.0, value=4.0)
        pipeline = v2.Compose([reldrop, mix] if order == "reldrop_first" else [mix, reldrop])
        torch.manual_seed(0)
        out_images, out_labels = pipeline(images, labels)
        # The same steps one by one, with the same random draws.
        reldrop_again = transform(model, device, p=1.0, value=4.0)
        torch.manual_seed(0)
        if order == "reldrop_first":
            expected_images, expected_labels = mix(*reldrop_again(images, labels))
        else:
            mixed_images, mixed_labels = mix(images, labels)
            expected_images, expected_labels = reldrop_again(mixed_images, mixed_labels)
            mask = reference_mask(model, mixed_images, mixed_labels, alpha=0.3, beta=0.5, p=1.0, seed=0)
            assert_filled(out_images, mixed_images, mask, 4.0)
        assert out_labels.shape == (images.shape[0], num_classes)
        torch.testing.assert_close(out_labels.sum(1), torch.ones(images.shape[0], device=device))
        assert torch.equal(out_images, expected_images)
        assert torch.equal(out_labels, expected_labels)
        assert bool((out_images == 4.0).any())

    def test_after_per_sample_pipeline(self, make_model):
        model = make_model()
        g = torch.Generator().manual_seed(0)
        raw = [torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g) for _ in range(6)]
        labels = torch.tensor([0, 1, 2, 3, 4, 0])
        per_sample = v2.Compose([
            v2.RandomResizedCrop(12, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.3]),
        ])
        torch.manual_seed(0)
        images = torch.stack([per_sample(tv_tensors.Image(x)) for x in raw]).as_subclass(torch.Tensor)
        assert images.shape == (6, 3, 12, 12) and images.dtype == torch.float32
        out_images, out_labels = transform(model, "cpu", p=1.0)(images, labels)
        mask = reference_mask(model, images, labels, alpha=0.3, beta=0.5, p=1.0, seed=0)
        assert bool(mask.any())
        assert_filled(out_images, images, mask, 0.0)  # 0.0 is the dataset mean after Normalize
        assert out_labels is labels

    def test_predicted_class_without_labels(self, model, batch, device):
        images, _ = batch
        out = transform(model, device, p=1.0, labels_getter=None)(images)
        assert isinstance(out, torch.Tensor) and out.shape == images.shape
        mask = reference_mask(model, images, None, alpha=0.3, beta=0.5, p=1.0, seed=0)
        assert bool(mask.any())
        assert_filled(out, images, mask, 0.0)

    def test_custom_labels_getter(self, model, batch, device):
        images, labels = batch
        calls = []

        def getter(sample):
            calls.append(sample)
            return sample[1]["y"]

        target = {"y": labels, "id": "batch-0"}
        out_images, out_target = transform(model, device, p=1.0, labels_getter=getter)(images, target)
        assert len(calls) == 1
        assert out_target["y"] is labels and out_target["id"] == "batch-0"
        mask = reference_mask(model, images, labels, alpha=0.3, beta=0.5, p=1.0, seed=0)
        assert_filled(out_images, images, mask, 0.0)

    @pytest.mark.parametrize("p", [1.0, 0.0])
    def test_generator_set_after_construction(self, model, batch, device, p):
        # refused only where a number was drawn (not at p = 0, nor at alpha = 0 with p = 1); now whatever p
        images, labels = batch
        later = transform(model, device, p=p, alpha=0.0)
        later.generator = 5
        with pytest.raises(TypeError, match="generator should be a torch.Generator or None, but got int"):
            later(images, labels)

    def test_labels_getter_set_after_construction(self, model, batch, device):
        # the getter was parsed once in __init__: setting it later was silently ignored (the default kept running)
        images, labels = batch
        other = (labels + 1) % 5
        later = transform(model, device, p=1.0)
        later.labels_getter = lambda sample: sample[1]["y"]
        out_images, _ = later(images, {"y": other})
        assert_filled(out_images, images, reference_mask(model, images, other, alpha=0.3, beta=0.5, p=1.0, seed=0),
                      0.0)
        later = transform(model, device, p=1.0)
        later.labels_getter = None  # the predicted class
        out_images = later(images)
        assert_filled(out_images, images, reference_mask(model, images, None, alpha=0.3, beta=0.5, p=1.0, seed=0),
                      0.0)
        later.labels_getter = "labels"
        with pytest.raises(ValueError, match="labels_getter should be 'default', a callable or None"):
            later(images, labels)

    def test_dict_input(self, model, batch, device):
        images, labels = batch
        out = transform(model, device, p=1.0)({"image": images, "labels": labels, "name": "x"})
        assert set(out) == {"image", "labels", "name"}
        assert out["labels"] is labels and out["name"] == "x"
        mask = reference_mask(model, images, labels, alpha=0.3, beta=0.5, p=1.0, seed=0)
        assert_filled(out["image"], images, mask, 0.0)

    def test_tuple_sample(self, model, batch, device):
        images, labels = batch
        out = transform(model, device, p=1.0)((images, labels))
        assert isinstance(out, tuple) and out[1] is labels
        assert not torch.equal(out[0], images)

    # -- the transform object -----------------------------------------------------------------------------------

    def test_model_not_a_submodule(self, model, device):
        t = transform(model, device)
        assert t.model is model
        assert list(t.parameters()) == []
        assert list(t.buffers()) == []
        assert len(t.state_dict()) == 0
        assert list(t.children()) == []
        model.train()
        t.eval()
        assert model.training  # .eval() on the transform does not reach the model

    def test_public_name(self):
        assert reldrop_transforms.RelevanceDropout2d is RelevanceDropout2d
        assert isinstance(RelevanceDropout2d(nn.Linear(2, 2)), v2.Transform)

    def test_pickle_round_trip(self, make_model, make_batch):
        model = make_model()
        images, labels = make_batch()
        t = RelevanceDropout2d(model, alpha=0.4, beta=0.6, p=1.0, value=(1.0, 2.0, 3.0))
        t2 = pickle.loads(pickle.dumps(t))
        assert isinstance(t2, RelevanceDropout2d)
        assert (t2.alpha, t2.beta, t2.p, t2.value) == (0.4, 0.6, 1.0, (1.0, 2.0, 3.0))
        assert t2.model is not model
        for (k, v), (k2, v2_) in zip(model.state_dict().items(), t2.model.state_dict().items()):
            assert k == k2 and torch.equal(v, v2_)
        assert t2(images, labels)[0].shape == images.shape

    def test_pickle_with_generator(self, make_model, make_batch):
        model = make_model()
        images, labels = make_batch()
        t = RelevanceDropout2d(model, p=0.6, generator=torch.Generator().manual_seed(3))
        t(images, labels)  # advance the generator: its state, not its seed, must travel
        t2 = pickle.loads(pickle.dumps(t))  # torch.Generator pickles with its state
        assert isinstance(t2.generator, torch.Generator) and t2.generator is not t.generator
        assert torch.equal(t2.generator.get_state(), t.generator.get_state())
        assert torch.equal(t(images, labels)[0], t2(images, labels)[0])

    # -- errors --------------------------------------------------------------------------------------------------

    @pytest.mark.parametrize("bad_label", [5, 100, -1])
    def test_label_outside_model_outputs(self, model, batch, device, bad_label):
        images, labels = batch
        labels = labels.clone()
        labels[3] = bad_label
        with pytest.raises(ValueError, match=r"class indices in \[0, 4\] \(the model has 5 outputs\)"):
            transform(model, device, p=1.0)(images, labels)

    def test_soft_labels_wrong_width(self, model, batch, device):
        images, _ = batch
        with pytest.raises(ValueError, match=r"soft labels should have shape \(B, K\) = \(8, 5\)"):
            transform(model, device, p=1.0)(images, torch.rand(8, 3, device=device))

    def test_labels_not_a_tensor(self, model, batch, device):
        images, labels = batch
        t = transform(model, device, p=1.0, labels_getter=lambda sample: sample[1].tolist())
        with pytest.raises(TypeError, match="the labels should be a torch.Tensor, but got list"):
            t(images, labels)

    @pytest.mark.parametrize("name", ["alpha", "beta", "p"])
    @pytest.mark.parametrize("bad", [-0.5, 1.5, float("nan")])
    def test_probabilities_outside_unit_interval(self, name, bad):
        with pytest.raises(ValueError, match=rf"`{name}` should be in the interval \[0.0, 1.0\], but got"):
            RelevanceDropout2d(nn.Linear(2, 2), **{name: bad})

    @pytest.mark.parametrize("name", ["alpha", "beta", "p"])
    def test_probabilities_not_numbers(self, name):
        with pytest.raises(TypeError, match=rf"`{name}` should be a real number"):
            RelevanceDropout2d(nn.Linear(2, 2), **{name: "0.5"})

    def test_constructor_errors(self):
        with pytest.raises(TypeError, match="model should be a torch.nn.Module"):
            RelevanceDropout2d(lambda x: x)
        with pytest.raises(ValueError, match="backend should be one of"):
            RelevanceDropout2d(nn.Linear(2, 2), backend="captum")
        with pytest.raises(TypeError, match="generator should be a torch.Generator"):
            RelevanceDropout2d(nn.Linear(2, 2), generator=0)
        with pytest.raises(ValueError, match="epsilon should be a number >= 0"):
            RelevanceDropout2d(nn.Linear(2, 2), epsilon=-1.0)
        with pytest.raises(ValueError, match=r"epsilon should be a number >= 0 \(and finite\), but got inf"):
            RelevanceDropout2d(nn.Linear(2, 2), epsilon=float("inf"))
        with pytest.raises(TypeError, match="epsilon should be a number >= 0, but got str '0.1'"):
            RelevanceDropout2d(nn.Linear(2, 2), epsilon="0.1")
        with pytest.raises(ValueError, match="labels_getter should be 'default', a callable or None"):
            RelevanceDropout2d(nn.Linear(2, 2), labels_getter="labels")
        for value in ("0", [], [1.0, "a"], True, None):
            with pytest.raises(TypeError, match="value should be a number or a sequence of numbers"):
                RelevanceDropout2d(nn.Linear(2, 2), value=value)
        for value in (math.nan, -math.inf, (0.0, math.nan, 1.0)):  # (the next batch would be refused as input)
            with pytest.raises(ValueError, match=r"value( \(each channel's\))? should be a finite number, but got"):
                RelevanceDropout2d(nn.Linear(2, 2), value=value)

    def test_a_model_that_needs_two_samples_whatever_the_coins(self):
        # `.squeeze()` before the head (a common idiom): fine at p = 1, but at p = 0.1 16 of 20 seeds raised
        # "returned (5,)" (one coin up, or none: a one-sample forward)
        class Squeezing(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).mean((2, 3), keepdim=True).squeeze())

        torch.manual_seed(0)
        model = Squeezing()
        images, labels = torch.rand(8, 3, 8, 8), torch.arange(8) % 5
        selected = set()
        for seed in range(20):
            out, _ = RelevanceDropout2d(model, p=0.1, generator=torch.Generator().manual_seed(seed))(images, labels)
            selected.add(int((out != images).flatten(1).any(1).sum()))
        assert {0, 1} <= selected  # the draws with no coin and with one coin up both ran

    @pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
    @pytest.mark.parametrize("with_labels", [True, False])
    def test_images_the_model_cannot_take_whatever_the_coins(self, model, make_batch, device, p, with_labels):
        """One channel for a three-channel model: torch's error for the whole batch, for every p and whatever the
        coins (was: torch's error naming the rows the coins selected, "input[3, 1, ...]", and at p = 0 without labels
        none at all; then that of the first two samples where only some are attributed, "input[2, 1, ...]", another
        message than at p = 1)."""
        images, labels = make_batch(batch_size=8, device=device, seed=3)
        images = images[:, :1].contiguous()
        messages = set()
        for seed in range(4):
            with pytest.raises(RuntimeError, match=r"expected input\[8, 1, 12, 12\] to have 3 channels") as caught:
                if with_labels:
                    transform(model, device, p=p, seed=seed)(images, labels)
                else:  # the predicted class
                    transform(model, device, p=p, seed=seed, labels_getter=None)(images)
            messages.add(str(caught.value))
        assert len(messages) == 1

    @pytest.mark.parametrize("head", ["conv_map", "unflatten", "vector"])
    def test_model_output_not_logits(self, device, batch, head):
        images, labels = batch
        bodies = {
            "conv_map": nn.Sequential(nn.Conv2d(3, 5, 3, padding=1)),
            "unflatten": nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(0)),
            "vector": nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                    nn.Unflatten(1, (5, 1))),
        }
        model = bodies[head].to(device)
        with pytest.raises(ValueError, match=r"the model should return logits of shape \(B, K\) = \(8, K\)"):
            transform(model, device, p=1.0)(images, labels)

    @pytest.mark.parametrize("model_device", OTHER_DEVICES)
    def test_inputs_on_another_device_than_model(self, make_model, make_batch, model_device):
        images, labels = make_batch()  # on the CPU
        moved = (r"the model's parameters are on the meta device, which holds no data" if model_device == "meta"
                 else rf"the inputs are on cpu but the model is on {model_device}")  # (not: move the batch to meta)
        with pytest.raises(ValueError, match=rf"RelevanceDropout2d: {moved}"):
            RelevanceDropout2d(make_model().to(model_device), p=1.0)(images, labels)
        with pytest.raises(ValueError, match=rf"the inputs are on {model_device}\S* but the model is on cpu"):
            RelevanceDropout2d(make_model(), p=1.0)(images.to(model_device), labels.to(model_device))

    def test_non_finite_relevance_names_sample(self, model, batch, device):
        images, labels = batch
        images = images.clone()
        images[2, 1, 4, 4] = float("nan")
        with pytest.raises(ValueError, match=r"RelevanceDropout2d: the inputs should be finite, but are not .* "
                                             r"sample\(s\) \[2\]"):
            transform(model, device, p=1.0)(images, labels)

    @pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 1.0])
    def test_non_finite_input_raises_whatever_the_coins(self, model, make_batch, device, p):
        """Checked on the whole batch before any attribution (was: only when its sample's coin came up)."""
        images, labels = make_batch(batch_size=8, device=device, seed=3)
        images = images.clone()
        images[5, 0, 0, 0] = float("nan")
        for seed in range(6):
            with pytest.raises(ValueError, match=r"the inputs should be finite, but are not .* sample\(s\) \[5\] "):
                transform(model, device, p=p, seed=seed)(images, labels)

    def test_non_finite_relevance_names_batch_index_with_coins(self, model, make_batch, device):
        # With p < 1 only the selected samples are attributed; the error must still name the batch index.
        images, labels = make_batch(batch_size=16, device=device, seed=3)
        seed = 5
        coins = torch.rand(16, generator=torch.Generator(device=device).manual_seed(seed), device=device) < 0.5
        selected = coins.nonzero().flatten().tolist()
        bad = next(i for k, i in enumerate(selected) if i != k)  # its position among the selected differs
        images = images.clone()
        images[bad, 0, 0, 0] = float("inf")
        with pytest.raises(ValueError, match=rf"should be finite, but are not .* sample\(s\) \[{bad}\]"):
            transform(model, device, p=0.5, seed=seed)(images, labels)

    @pytest.mark.parametrize("bad_weight", [float("nan"), float("inf")])
    def test_non_finite_relevance_from_weights(self, make_model, batch, device, bad_weight):
        images, labels = batch
        model = make_model()
        with torch.no_grad():
            model[0].weight[0, 0, 0, 0] = bad_weight
        model = model.to(device)
        with pytest.raises(ValueError, match=r"not finite .* sample\(s\) \[0, 1, 2, 3, 4, 5, 6, 7\]"):
            transform(model, device, p=1.0)(images, labels)

    def test_labels_given_as_a_list(self, model, batch, device):
        images, _ = batch
        with pytest.raises(TypeError, match="the labels should be a torch.Tensor, but got list"):
            transform(model, device, p=1.0)(images, [0] * images.shape[0])

    @pytest.mark.parametrize("p", [0.0, 1.0])
    def test_empty_images(self, model, device, p):
        images = torch.rand(2, 3, 0, 8, device=device)
        for cls in (RelevanceDropout2d, RelevanceErasing2d):
            with pytest.raises(ValueError, match=rf"{cls.__name__} expects samples with at least one element each, "
                                                 r"but got a batch of shape \(2, 3, 0, 8\)"):
                cls(model, p=p)(images, torch.tensor([0, 1], device=device))

    def test_two_image_batches(self, model, batch, device):
        images, labels = batch
        with pytest.raises(ValueError, match="expects exactly one image batch per call, but found 2"):
            transform(model, device, p=1.0)(tv_tensors.Image(images), tv_tensors.Image(images), labels)
