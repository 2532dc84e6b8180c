"""Behaviour that RelevanceDropout2d and RelevanceErasing2d share through their common image-batch base: input
checks, untouched inputs and model, the ``p = 0`` shortcut, empty batches and reproducibility.

Each test runs once per transform class. What depends on the mask rule (the masks themselves, compared with a
reference computation) is tested per transform in test_dropout2d.py and test_erasing2d.py.
"""

from __future__ import annotations

import copy

import PIL.Image
import pytest
import torch
from torch import nn
from torchvision import tv_tensors

from reldrop_transforms import RelevanceDropout2d, RelevanceErasing2d

from helpers import assert_same_state, assert_setting_applies_from_the_next_call, seeded_transform, snapshot

# Keyword arguments under which a transform's masks differ between seeds on the tiny model (none: the defaults).
MASK_KWARGS = {RelevanceErasing2d: {"top_k": 4}}


@pytest.fixture(params=[RelevanceDropout2d, RelevanceErasing2d], ids=lambda cls: cls.__name__)
def transform_cls(request):
    return request.param


@pytest.fixture
def transform(transform_cls, model, device):
    """Factory ``transform(**kwargs)`` of the class under test on ``model``, with a generator on ``device``
    seeded with ``kwargs.pop("seed", 0)``."""
    def make(**kwargs):
        return seeded_transform(transform_cls, model, device, **kwargs)

    return make


@pytest.fixture
def mask_kwargs(transform_cls):
    return MASK_KWARGS.get(transform_cls, {})


class TestImageBatchTransforms:
    # -- the inputs and the model are left alone ----------------------------------------------------------------

    def test_inputs_not_modified(self, transform, batch):
        images, labels = batch
        images_before, labels_before = images.clone(), labels.clone()
        versions = images._version, labels._version
        out_images, _ = transform(p=1.0)(images, labels)
        assert (images._version, labels._version) == versions
        assert torch.equal(images, images_before) and torch.equal(labels, labels_before)
        assert not torch.equal(out_images, images)

    @pytest.mark.parametrize("p", [1.0, 0.0])
    def test_value_that_overflows_the_dtype(self, transform_cls, model, p):
        # checked in float64 only: value=1e5 became inf in a float16 batch (the next call refused it as input);
        # the same error whatever the coins
        images = torch.rand(2, 3, 8, 8).half()
        t = transform_cls(copy.deepcopy(model).half(), p=p, value=1e5)
        with pytest.raises(ValueError, match=r"value 100000.0 is not finite in torch.float16 .* 65504"):
            t(images, torch.tensor([0, 1]))
        t = transform_cls(copy.deepcopy(model).half(), p=p, value=(0.0, 1e5, 0.0))
        with pytest.raises(ValueError, match="not finite in torch.float16"):
            t(images, torch.tensor([0, 1]))

    def test_value_set_after_construction(self, transform, batch):
        # a list set later failed in the dtype check ("only one element tensors can be converted"); an invalid value
        # set later got torch's error instead of the constructor's
        images, labels = batch
        expected, _ = transform(p=1.0, value=(0.1, 0.2, 0.3))(images, labels)
        later = transform(p=1.0)
        later.value = [0.1, 0.2, 0.3]
        out, _ = later(images, labels)
        assert torch.equal(out, expected)
        later.value = "x"
        with pytest.raises(TypeError, match="value should be a number or a sequence of numbers"):
            later(images, labels)
        later.value = (0.0, 1.0)
        with pytest.raises(ValueError, match="value has 2 entries but the images have 3 channels"):
            later(images, labels)

    @pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
    def test_settings_set_after_construction(self, transform_cls, transform, batch, p):
        # alpha, beta (dropout), scale, ratio, top_k, num_patches (erasing) set later were checked only inside the
        # mask kernel: accepted at p = 0 or when no coin came up, raised after a whole attribution otherwise. Now
        # as at construction, before any coin (the generator does not move), whatever p and the coins
        images, labels = batch
        bad = ({"alpha": (1.5, ValueError), "beta": (-1.0, ValueError), "p": (2.0, ValueError)}
               if transform_cls is RelevanceDropout2d else
               {"scale": ((0.5, 0.1), ValueError), "ratio": ("x", TypeError), "top_k": (0, ValueError),
                "num_patches": (1.5, TypeError), "p": (-0.5, ValueError)})
        for name, (value, error) in bad.items():
            t = transform(p=p)
            setattr(t, name, value)
            state = t.generator.get_state()
            with pytest.raises(error, match=f"`?{name}`? should"):
                t(images, labels)
            assert torch.equal(t.generator.get_state(), state)
        good = {"alpha": 0.7, "beta": 0.2} if transform_cls is RelevanceDropout2d else \
            {"scale": [0.1, 0.2], "ratio": [0.5, 2.0], "top_k": 2, "num_patches": 2}
        expected, _ = transform(p=p, **good)(images, labels)
        later = transform(p=p)
        for name, value in good.items():
            setattr(later, name, value)
        out, _ = later(images, labels)
        assert torch.equal(out, expected)

    def test_images_not_first_in_a_dict_says_why(self, transform, batch):
        # torchvision's rule takes the first plain tensor as the images: the error only said to use it after the
        # DataLoader, which the caller had done
        images, labels = batch
        with pytest.raises(ValueError, match=r"but got \(4,\) instead\. The images are the first plain tensor"):
            transform(p=1.0)({"index": torch.arange(4), "image": images, "labels": labels})
        out = transform(p=1.0)({"index": torch.arange(4), "image": tv_tensors.Image(images), "labels": labels})
        assert isinstance(out["image"], tv_tensors.Image)

    @pytest.mark.parametrize("shape", ["flat", "5d"])
    def test_images_first_but_of_another_rank_are_not_told_to_put_them_first(self, transform, batch, shape):
        # flattened or 5-d images, first in the sample with their labels, were told to put them first
        images, labels = batch
        with pytest.raises(ValueError, match=r"expects a batch of shape \(B, C, H, W\), but got") as info:
            transform(p=1.0)(images.flatten(1) if shape == "flat" else images[:, None], labels)
        assert "put them first" not in str(info.value)

    @pytest.mark.parametrize("with_label", [True, False])
    def test_a_single_image_is_told_to_add_the_batch_dimension(self, transform, batch, with_label):
        # a (C, H, W) image with its label was told to put the images first, though they were first
        images, labels = batch
        sample = (images[0], labels[0]) if with_label else (images[0],)
        with pytest.raises(ValueError, match=r"but got \(3, 12, 12\) instead\. A single image \(C, H, W\) has no batch "
                           r"dimension") as info:
            transform(p=1.0)(*sample)
        assert "put them first" not in str(info.value)
        # B grey images (B, H, W) (MNIST-like tensors) were told image[None] only, which makes (1, B, H, W)
        assert "images[:, None]" in str(info.value)

    def test_model_state_untouched(self, transform, model, batch):
        images, labels = batch
        model.train()
        before = snapshot(model)
        params = list(model.parameters())
        state = {k: v.clone() for k, v in model.state_dict().items()}
        transform(p=1.0)(images, labels)
        assert model.training and all(m.training for m in model.modules())
        assert all(a is b for a, b in zip(model.parameters(), params, strict=True))  # the same objects
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert all(p.grad is None for p in model.parameters())
        assert_same_state(before, model)

    # -- the per-sample coin, empty batches, reproducibility ----------------------------------------------------

    def test_p_zero_returns_input_unchanged(self, transform, batch):
        images, labels = batch
        out_images, out_labels = transform(p=0.0)(images, labels)
        assert out_images is images
        assert out_labels is labels

    def test_empty_batch(self, transform, device):
        images = torch.zeros(0, 3, 12, 12, device=device)
        labels = torch.zeros(0, dtype=torch.long, device=device)
        out_images, out_labels = transform(p=1.0)(images, labels)
        assert out_images.shape == (0, 3, 12, 12)
        assert torch.equal(out_images, images)
        assert out_labels is labels

    def test_reproducible_with_generator(self, transform, mask_kwargs, batch):
        images, labels = batch
        a, _ = transform(p=0.7, seed=1, **mask_kwargs)(images, labels)
        b, _ = transform(p=0.7, seed=1, **mask_kwargs)(images, labels)
        c, _ = transform(p=0.7, seed=2, **mask_kwargs)(images, labels)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        t = transform(p=1.0, seed=1, **mask_kwargs)
        first, second = t(images, labels)[0], t(images, labels)[0]
        assert not torch.equal(first, second)  # the generator advances

    # -- torchvision's two-step API --------------------------------------------------------------------------------

    def test_make_params_then_transform_is_the_call(self, transform, mask_kwargs, batch):
        """``t.transform(x, t.make_params([x, y]))``, torchvision's two-step API, masks as ``t(x, y)`` does with the
        same draws, and masks anything else given to ``transform`` the same way (was: ``make_params`` returned
        ``{}`` and ``transform`` raised ``KeyError: 'mask'``)."""
        images, labels = batch
        expected, _ = transform(p=0.7, seed=3, **mask_kwargs)(images, labels)
        t = transform(p=0.7, seed=3, **mask_kwargs)
        params = t.make_params([tv_tensors.Image(images), labels])
        out = t.transform(tv_tensors.Image(images), params)
        assert isinstance(out, tv_tensors.Image)
        assert torch.equal(out.as_subclass(torch.Tensor), expected)
        assert not torch.equal(expected, images)
        assert torch.equal(t.transform(images + 1, params) != images + 1, expected != images)  # the same mask

    def test_make_params_without_a_masked_sample(self, transform, batch):
        images, labels = batch
        t = transform(p=0.0)
        params = t.make_params((images, labels))
        assert params["mask"] is None
        assert t.transform(images, params) is images

    def test_make_params_checks_as_the_call(self, transform, batch):
        images, labels = batch
        with pytest.raises(ValueError, match="could not find the labels"):
            transform(p=1.0).make_params([images])  # (torchvision's forward would hand it the images alone)
        with pytest.raises(ValueError, match=r"labels of shape \(7,\) do not match a batch of 8 images"):
            transform(p=1.0).make_params([images, labels[:7]])
        with pytest.raises(TypeError, match=r"make_params expects a non-empty list of inputs"):
            transform(p=1.0).make_params([])

    def test_transform_without_make_params(self, transform, transform_cls, batch):
        images, _ = batch
        with pytest.raises(ValueError, match=rf"{transform_cls.__name__}.transform expects the params of make_params "
                                             r"\(a 'mask' and a 'value'\), but got the keys \[\]"):
            transform(p=1.0).transform(images, {})

    # -- the model a copied transform holds ----------------------------------------------------------------------

    def test_deepcopy_holds_a_copy_until_the_model_is_rebound(self, transform, transform_cls, mask_kwargs, model,
                                                              batch, device):
        images, labels = batch
        t = transform(p=1.0, **mask_kwargs)
        rebound = copy.deepcopy(t)  # as a transform restored from a checkpoint: its own copy of the model
        assert rebound.model is not model
        stale = copy.deepcopy(rebound)
        rebound.model = model
        assert rebound.model is model
        assert list(rebound.children()) == [] and len(rebound.state_dict()) == 0  # still not a submodule
        with torch.no_grad():  # training goes on: the masks follow the model's new weights
            for param in model.parameters():
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(7)).to(device))
        expected, _ = transform(p=1.0, **mask_kwargs)(images, labels)
        assert torch.equal(rebound(images, labels)[0], expected)
        assert not torch.equal(stale(images, labels)[0], expected)

    def test_model_set_to_a_non_module(self, transform):
        t = transform()
        with pytest.raises(TypeError, match=r"model should be a torch.nn.Module, but got function"):
            t.model = lambda x: x

    # -- errors ---------------------------------------------------------------------------------------------------

    @pytest.mark.parametrize("shape", [(3, 12, 12), (2, 2, 3, 12, 12), (8, 12)])
    def test_batch_not_4d(self, transform, transform_cls, device, shape):
        images = torch.randn(shape, device=device)
        labels = torch.zeros(shape[0], dtype=torch.long, device=device)
        match = rf"{transform_cls.__name__} expects a batch of shape \(B, C, H, W\), but got"
        with pytest.raises(ValueError, match=match):
            transform(p=1.0)(images, labels)

    @pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
    def test_integer_images(self, transform, batch, dtype):
        images, labels = batch
        with pytest.raises(TypeError, match=r"floating-point inputs.*ToDtype"):
            transform(p=1.0)(images.to(dtype), labels)

    def test_labels_length_differs(self, transform, batch, device):
        images, labels = batch
        with pytest.raises(ValueError, match=r"labels of shape \(7,\) do not match a batch of 8 images"):
            transform(p=1.0)(images, labels[:7])
        with pytest.raises(ValueError, match=r"labels of shape \(8, 2, 5\) do not match"):
            transform(p=1.0)(images, torch.zeros(8, 2, 5, device=device))

    def test_labels_on_the_meta_device(self, transform, batch):
        images, labels = batch
        with pytest.raises(ValueError, match="the labels are on the meta device, which holds no values"):
            transform(p=1.0)(images, labels.to("meta"))  # (was: RuntimeError from Tensor.item())

    def test_labels_not_found(self, transform, batch):
        images, _ = batch
        with pytest.raises(ValueError, match="could not find the labels"):
            transform(p=1.0)(images)
        with pytest.raises(ValueError, match="could not find the labels in a dict"):
            transform(p=1.0)({"image": images, "target": 1})

    def test_value_length_differs_from_channels(self, transform, transform_cls, batch):
        images, labels = batch
        match = f"{transform_cls.__name__}: value has 2 entries but the images have 3 channels"
        with pytest.raises(ValueError, match=match):
            transform(p=1.0, value=(1.0, 2.0))(images, labels)

    def test_no_image_batch_says_what_it_got(self, transform, transform_cls):
        from torch_geometric.data import Batch, Data

        clouds = Batch.from_data_list([Data(pos=torch.rand(5, 3), y=torch.tensor([0]))])
        with pytest.raises(ValueError, match=rf"{transform_cls.__name__} expects exactly one image batch per call, but "
                                             r"found 0 \(got DataBatch: for point clouds use RelevanceDropout3d or "
                                             r"RelevanceErasing3d\)"):
            transform(p=1.0)(clouds)
        with pytest.raises(ValueError, match=r"found 0 \(got str, int; the images are a tv_tensors.Image or the first "
                                             r"plain tensor\)"):
            transform(p=1.0)("images", 3)

    def test_no_input(self, transform_cls, model):
        with pytest.raises(TypeError, match=f"{transform_cls.__name__} expects a batch of images .* but got no input"):
            transform_cls(model)()  # (was IndexError: tuple index out of range)

    def test_pil_image(self, transform_cls, model):
        with pytest.raises(TypeError, match="works on batched tensors, but got a PIL image"):
            transform_cls(model, p=1.0)(PIL.Image.new("RGB", (12, 12)), torch.tensor([0]))

    @pytest.mark.parametrize("as_sample", [False, True])
    def test_video(self, transform, transform_cls, device, as_sample):
        video = tv_tensors.Video(torch.rand(2, 4, 3, 12, 12, device=device))  # (B, T, C, H, W)
        labels = torch.tensor([0, 1], device=device)
        match = (rf"{transform_cls.__name__} expects a batch of images \(B, C, H, W\), but got a tv_tensors.Video: "
                 r"videos are not supported\. Reshape the frames into a batch of images.*\(B\*T, C, H, W\)")
        with pytest.raises(TypeError, match=match):
            if as_sample:
                transform(p=1.0)({"video": video, "labels": labels})
            else:
                transform(p=1.0)(video, labels)


@pytest.mark.parametrize("make", [
    lambda model, g: RelevanceDropout2d(model, p=0.5, alpha=0.4, generator=g),
    lambda model, g: RelevanceErasing2d(model, p=0.5, generator=g),
], ids=["dropout", "erasing"])
def test_two_threads_sharing_a_generator_draw_in_turn(make):
    """Two threads calling one transform at once: each batch's coins and noise are drawn in one piece, so the two
    outputs are those of the calls in one order or the other (was: 65 of 100 pairs matched neither, one call's
    coins and the other's noise interleaving on the shared generator)."""
    import sys
    import threading

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 5))
    a = (torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    b = (torch.randn(4, 3, 8, 8), torch.tensor([4, 3, 2, 1]))
    t = make(model, torch.Generator().manual_seed(9))
    a_first = (t(*a)[0], t(*b)[0])
    t = make(model, torch.Generator().manual_seed(9))
    later = t(*b)[0]
    b_first = (t(*a)[0], later)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(30):
            t = make(model, torch.Generator().manual_seed(9))
            barrier, out = threading.Barrier(2), {}

            def call(key, sample, t=t, barrier=barrier, out=out):
                barrier.wait()
                out[key] = t(*sample)[0]

            threads = [threading.Thread(target=call, args=("a", a)), threading.Thread(target=call, args=("b", b))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert any(torch.equal(out["a"], x) and torch.equal(out["b"], y) for x, y in (a_first, b_first))
    finally:
        sys.setswitchinterval(interval)



@pytest.mark.parametrize("make, setting, value", [
    (lambda model, g: RelevanceDropout2d(model, p=1.0, alpha=0.0, generator=g), "alpha", 0.3),
    (lambda model, g: RelevanceErasing2d(model, p=1.0, num_patches=1, generator=g), "num_patches", 3),
], ids=["dropout", "erasing"])
def test_a_setting_changed_in_another_thread_applies_from_the_next_call(make, setting, value):
    """A schedule thread setting ``t.alpha`` / ``t.num_patches`` while a prefetcher is inside ``t(...)``: the call
    read the setting again after its draws, so that it drew alpha = 0.3's noise from the global RNG (its own
    draws were alpha = 0's: none), or failed with "size draws should have shape (6, 3, 10, 2), but got (6, 1, 10,
    2)" (found by a peer probe: 680 errors in 1228 calls). A call now runs on its own copy of the settings, and the
    assignment applies from the next call (without a lock, which deadlocked a setter waited for under it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 5))
    sample = (torch.randn(6, 3, 10, 10), torch.tensor([0, 1, 2, 3, 4, 0]))
    expected = make(model, torch.Generator().manual_seed(3))(*sample)[0]
    t = make(model, torch.Generator().manual_seed(3))
    out = assert_setting_applies_from_the_next_call(t, setting, value, sample, model[0])
    assert torch.equal(out[0], expected)  # the call's own settings throughout
    later = make(model, torch.Generator().manual_seed(3))
    later(*sample)
    setattr(later, setting, value)
    assert torch.equal(t(*sample)[0], later(*sample)[0])  # the next call: the new value


def test_no_deadlock_with_waits_across_threads():
    """Two waits across threads that a lock held over the whole call (an earlier fix of the settings race) turned
    into hangs (found by a peer review): a training step under model_lock that has another thread set a setting
    and waits for it; a labels_getter that waits for a thread taking model_lock (a teacher's pseudo-labels)."""
    import threading

    from reldrop_transforms.attribution import model_lock

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 5))
    images = torch.randn(4, 3, 8, 8)
    t = RelevanceDropout2d(model, p=1.0, generator=torch.Generator().manual_seed(0))
    with model_lock(model):  # a training step that hands a schedule's update to another thread
        setter = threading.Thread(target=setattr, args=(t, "alpha", 0.2), daemon=True)
        setter.start()
        setter.join(10)
        assert not setter.is_alive() and t.alpha == 0.2

    def teacher_labels(sample):
        labels = {}

        def teach():
            with model_lock(model), torch.no_grad():
                labels["y"] = model(sample[0]).argmax(1)

        worker = threading.Thread(target=teach, daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive()
        return labels["y"]

    t.labels_getter = teacher_labels
    out = {}
    caller = threading.Thread(target=lambda: out.setdefault("images", t(images, torch.zeros(4))[0]), daemon=True)
    caller.start()
    caller.join(30)
    assert not caller.is_alive() and out["images"].shape == images.shape
