"""Relevance-guided erasing kernels against slow, obviously-correct per-sample loops, and their statistics.

``sample_erasing_sizes`` (the first-fitting-try rule), ``relevant_centres`` (the documented draw order),
``box_mask`` (slicing), ``relevance_erasing_mask`` (their composition) and ``relevance_ball_mask`` (per cloud:
bounding-box diagonal, ranking, radius; dense and grouped, sorted or not) are each compared with a Python loop fed
the same generator draws. The statistical tests use fixed seeds (deterministic) and state their tolerances.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

import reldrop_transforms.functional as F
from reldrop_transforms.functional import (
    ball_draws,
    box_mask,
    erasing_draws,
    relevance_ball_mask,
    relevance_erasing_mask,
    relevant_centres,
    sample_erasing_sizes,
)

DTYPES = [torch.float32, torch.float64]
TRIES = 10  # torchvision's RandomErasing


def seeded(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# -- slow references -------------------------------------------------------------------------------------------


def loop_sizes(draws, height, width, scale, ratio, num_patches):
    """The first-fitting-try rule per sample and patch, in Python floats: try ``t`` uses ``draws[b, p, t]`` =
    (area draw, ratio draw); ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))`` and the try
    fits when ``0 < h < H`` and ``0 < w < W``. Returns sizes (B, P, 2) (zeros where nothing fits) and valid."""
    batch_size, patches, tries, _ = draws.shape
    sizes = torch.zeros(batch_size, patches, 2, dtype=torch.long)
    valid = torch.zeros(batch_size, patches, dtype=torch.bool)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for b in range(batch_size):
        for p in range(patches):
            for t in range(tries):
                u_area, u_ratio = float(draws[b, p, t, 0]), float(draws[b, p, t, 1])
                area = (scale[0] + (scale[1] - scale[0]) * u_area) * height * width / num_patches
                aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
                h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if 0 < h < height and 0 < w < width:
                    sizes[b, p] = torch.tensor([h, w])
                    valid[b, p] = True
                    break
    return sizes, valid


def loop_centres(relevance, top_k, draws):
    """Per sample: rank the pixels by relevance (descending), pick rank ``floor(u0 * k)`` of the top ``k``; a
    constant sample instead picks pixel ``floor(u1 * H * W)`` in raster order. ``draws`` is (B, P, 2)."""
    batch_size, height, width = relevance.shape
    patches = draws.shape[1]
    centres = torch.zeros(batch_size, patches, 2, dtype=torch.long)
    for b in range(batch_size):
        values = relevance[b].flatten().tolist()
        ranking = sorted(range(len(values)), key=lambda i: -values[i])
        k = min(top_k, len(values))
        flat = max(values) == min(values)
        for p in range(patches):
            if flat:
                index = min(int(float(draws[b, p, 1]) * len(values)), len(values) - 1)
            else:
                index = ranking[min(int(float(draws[b, p, 0]) * k), k - 1)]
            centres[b, p] = torch.tensor([index // width, index % width])
    return centres


def loop_box(height, width, centres, sizes, valid=None):
    """The union of the clipped rectangles, by slicing: rows ``[c - h // 2, c - h // 2 + h)``."""
    batch_size, patches, _ = centres.shape
    out = torch.zeros(batch_size, height, width, dtype=torch.bool)
    for b in range(batch_size):
        for p in range(patches):
            if valid is not None and not bool(valid[b, p]):
                continue
            (row, col), (h, w) = centres[b, p].tolist(), sizes[b, p].tolist()
            top, left = row - h // 2, col - w // 2
            out[b, max(top, 0):max(top + h, 0), max(left, 0):max(left + w, 0)] = True
    return out


def loop_ball(relevance, pos, draws, radius, top_k, batch=None, num_segments=None):
    """Per cloud (the points with ``batch == i``, in their order): bounding-box diagonal, points ranked by
    relevance (descending, ties by position), centre of rank ``floor(u0 * min(k, n))`` (of ``floor(u0 * n)`` for a
    constant cloud), radius ``(lo + (hi - lo) * u1) * diagonal``; drop the points within it."""
    if batch is None:
        dense_shape = relevance.shape
        batch = torch.arange(relevance.shape[0]).repeat_interleave(relevance.shape[1])
        relevance, pos, num_segments = relevance.reshape(-1), pos.reshape(-1, pos.shape[-1]), dense_shape[0]
    else:
        dense_shape = None
    out = torch.zeros(relevance.shape, dtype=torch.bool)
    for i in range(num_segments):
        members = (batch == i).nonzero().flatten().tolist()
        if not members:
            continue
        rel, xyz = relevance[members], pos[members]
        values = rel.tolist()
        ranking = sorted(range(len(members)), key=lambda j: -values[j])  # stable: ties keep their order
        choices = len(members) if max(values) == min(values) else min(top_k, len(members))
        centre = ranking[min(int(float(draws[i, 0]) * choices), choices - 1)]
        diagonal = (xyz.max(0).values - xyz.min(0).values).norm()
        r = (radius[0] + (radius[1] - radius[0]) * draws[i, 1]) * diagonal
        dropped = (xyz - xyz[centre]).norm(dim=1) <= r
        out[torch.tensor(members)] = dropped
    return out if dense_shape is None else out.reshape(dense_shape)


def ks_uniform(samples: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of ``samples`` (on [0, 1]) from U(0, 1)."""
    x = samples.double().sort().values
    n = x.numel()
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - x
    lower = x - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(upper, lower).max())


def random_relevance(batch_size, height, width, *, seed=0, dtype=torch.float32, flat_rows=()):
    g = seeded(seed)
    rel = torch.randn(batch_size, height, width, generator=g, dtype=dtype)
    for row, value in flat_rows:
        rel[row] = value
    return rel


def peaked_relevance(batch_size, height, width, row, col):
    """A Gaussian bump at (row, col): the top pixel is (row, col) and the ranking is unique near it."""
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None, :]
    bump = torch.exp(-((rows - row) ** 2 + (cols - col + 0.1) ** 2) / 50.0)
    return bump.float().expand(batch_size, height, width).clone()


def test_public_names():
    for name in ("sample_erasing_sizes", "relevant_centres", "box_mask", "relevance_erasing_mask",
                 "relevance_ball_mask"):
        assert name in F.__all__ and callable(getattr(F, name))


# -- sample_erasing_sizes ----------------------------------------------------------------------------------------


class TestSampleErasingSizes:
    def test_draws_of_another_shape(self):
        """(A tries dimension of 3 instead of 10 was accepted.)"""
        with pytest.raises(ValueError, match=r"size draws should have shape \(2, 1, 10, 2\), but got \(2, 1, 3, 2\)"):
            sample_erasing_sizes(2, 8, 8, draws=torch.rand(2, 1, 3, 2))
        with pytest.raises(ValueError, match=r"draws should be the pair \(size draws, centre draws\)"):
            relevance_erasing_mask(torch.rand(2, 8, 8), draws=torch.rand(2, 1, 10, 2))

    @pytest.mark.parametrize("height, width, scale, ratio, num_patches, seed", [
        (12, 12, (0.02, 0.4), (0.3, 3.3), 1, 0),
        (9, 17, (0.02, 0.4), (0.3, 3.3), 1, 1),
        (16, 16, (0.75, 0.95), (0.3, 3.3), 1, 2),  # many tries fail, some samples never fit
        (8, 8, (0.001, 0.05), (0.5, 2.0), 1, 3),  # tiny areas: h or w rounds to 0 sometimes
        (20, 14, (0.05, 0.5), (0.2, 5.0), 3, 4),
        (32, 32, (0.1, 0.1), (1.0, 1.0), 4, 5),  # degenerate ranges
    ])
    def test_matches_loop(self, height, width, scale, ratio, num_patches, seed):
        batch_size = 40
        sizes, valid = sample_erasing_sizes(batch_size, height, width, scale=scale, ratio=ratio,
                                            num_patches=num_patches, generator=seeded(seed))
        draws = torch.rand(batch_size, num_patches, TRIES, 2, generator=seeded(seed))  # the documented draws
        ref_sizes, ref_valid = loop_sizes(draws, height, width, scale, ratio, num_patches)
        assert sizes.shape == (batch_size, num_patches, 2) and sizes.dtype == torch.long
        assert valid.shape == (batch_size, num_patches) and valid.dtype == torch.bool
        assert torch.equal(valid, ref_valid)
        assert torch.equal(sizes[valid], ref_sizes[valid])
        assert bool((sizes[valid] > 0).all())
        assert bool((sizes[valid][:, 0] < height).all()) and bool((sizes[valid][:, 1] < width).all())
        if seed == 2:
            assert 0 < int(valid.sum()) < valid.numel()  # both branches of the rule are exercised

    def test_first_fitting_try_is_taken(self):
        # scale (0.5, 0.9), ratio (0.3, 3.3) on 10x10: most tries fail; the loop picks the first success, not
        # e.g. the last or the largest one.
        draws = torch.rand(200, 1, TRIES, 2, generator=seeded(7))
        sizes, valid = sample_erasing_sizes(200, 10, 10, scale=(0.5, 0.9), generator=seeded(7))
        ref_sizes, ref_valid = loop_sizes(draws, 10, 10, (0.5, 0.9), (0.3, 3.3), 1)
        assert torch.equal(valid, ref_valid) and torch.equal(sizes[valid], ref_sizes[valid])
        first_fails = []
        for b in range(200):
            u_area, u_ratio = draws[b, 0, 0].tolist()
            area = (0.5 + 0.4 * u_area) * 100
            aspect = math.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u_ratio)
            first_fails.append(not (round(math.sqrt(area * aspect)) < 10 and round(math.sqrt(area / aspect)) < 10))
        assert sum(first_fails) > 20  # later tries matter in this test

    def test_no_fit_is_invalid(self):
        sizes, valid = sample_erasing_sizes(16, 4, 4, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=seeded(0))
        assert not bool(valid.any())  # h = w = 4 never fits strictly inside a 4x4 image

    def test_device_and_generator_advance(self, device):
        g = seeded(0, device)
        a = sample_erasing_sizes(8, 16, 16, generator=g, device=device)
        b = sample_erasing_sizes(8, 16, 16, generator=g, device=device)
        assert a[0].device.type == torch.device(device).type and a[1].device.type == torch.device(device).type
        assert not torch.equal(a[0], b[0])
        c = sample_erasing_sizes(8, 16, 16, generator=seeded(0, device), device=device)
        assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
        assert sample_erasing_sizes(3, 8, 8)[0].device == torch.device("cpu")

    def test_matches_torchvision_random_erasing(self):
        # Our defaults on a 32x32 image (torchvision's default scale is (0.02, 0.33); the published code uses
        # (0.02, 0.4)): the erased area fraction (0 where nothing fits) has the distribution of v2.RandomErasing's
        # with the same scale and ratio. Two-sample KS at n = m = 3000: 1.95 * sqrt(2 / n) = 0.050 is the 0.1% level.
        n = 3000
        sizes, valid = sample_erasing_sizes(n, 32, 32, generator=seeded(11))
        ours = (sizes[:, 0].prod(-1) * valid[:, 0]).double() / 1024
        erasing = v2.RandomErasing(p=1.0, scale=(0.02, 0.4), ratio=(0.3, 3.3))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12)
            image = torch.zeros(3, 32, 32)
            theirs = []
            for _ in range(n):
                params = erasing.make_params([image])
                theirs.append(0.0 if params["v"] is None else params["h"] * params["w"] / 1024)
        theirs = torch.tensor(theirs, dtype=torch.float64)
        grid = torch.cat([ours, theirs]).unique()
        cdf_ours = (ours[None, :] <= grid[:, None]).double().mean(1)
        cdf_theirs = (theirs[None, :] <= grid[:, None]).double().mean(1)
        assert float((cdf_ours - cdf_theirs).abs().max()) < 1.95 * math.sqrt(2 / n)
        assert abs(float(ours.mean()) - float(theirs.mean())) < 0.01  # sd of a mean ~0.002

    def test_aspect_ratio_log_uniform(self):
        # Large image, small areas: the first try always fits and h, w >= 100, so log(h / w) is log-uniform in
        # ratio up to rounding (|error| <= 0.5 / 100 per side, 0.01 / log(11) = 0.004 on the unit scale).
        n = 4000
        sizes, valid = sample_erasing_sizes(n, 2000, 2000, scale=(0.01, 0.04), ratio=(0.3, 3.3),
                                            generator=seeded(13))
        assert bool(valid.all()) and int(sizes.min()) >= 100
        log_ratio = (sizes[:, 0, 0].double() / sizes[:, 0, 1].double()).log()
        unit = (log_ratio - math.log(0.3)) / (math.log(3.3) - math.log(0.3))
        assert float(unit.min()) > -0.005 and float(unit.max()) < 1.005
        assert ks_uniform(unit.clamp(0, 1)) < 1.95 / math.sqrt(n) + 0.005  # 0.1% KS level + rounding
        assert abs(float(unit.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n) + 0.005
        # the plain ratio is not uniform: its median is the geometric mean sqrt(0.3 * 3.3) ~ 0.995, not 1.8
        assert abs(float(log_ratio.exp().median()) - math.sqrt(0.99)) < 0.1

    def test_area_split_over_patches(self):
        # Everything fits (ratio (0.5, 2), per-patch area <= 0.4 / P): the mean patch area fraction is
        # mean(scale) / P; the rounding error per side is <= 0.5 (<= (h + w) / 2 + 1/4 pixels per patch).
        n, height, width = 2000, 256, 256
        for patches in (1, 2, 4):
            sizes, valid = sample_erasing_sizes(n, height, width, scale=(0.1, 0.4), ratio=(0.5, 2.0),
                                                num_patches=patches, generator=seeded(14 + patches))
            assert sizes.shape == (n, patches, 2) and bool(valid.all())
            fraction = sizes.prod(-1).double() / (height * width)  # per patch
            sd = 0.3 / math.sqrt(12) / patches / math.sqrt(n * patches)
            slack = (float(sizes.sum(-1).max()) / 2 + 0.25) / (height * width)
            assert abs(float(fraction.mean()) - 0.25 / patches) < 5 * sd + slack
            assert float(fraction.max()) <= 0.4 / patches + slack
            assert float(fraction.min()) >= 0.1 / patches - slack

    @pytest.mark.parametrize("kwargs, error, match", [
        ({"scale": (0.4, 0.02)}, ValueError, r"`scale` should be an increasing pair in \[0.0, 1.0\], but got "
                                             r"\(0.4, 0.02\)"),
        ({"scale": (0.1, 1.5)}, ValueError, r"`scale` should be an increasing pair in \[0.0, 1.0\]"),
        ({"scale": (-0.1, 0.5)}, ValueError, r"`scale` should be an increasing pair"),
        ({"scale": (0.1, float("nan"))}, ValueError, r"`scale` should be an increasing pair"),
        ({"scale": 0.3}, TypeError, r"`scale` should be a sequence \(min, max\), but got 0.3"),
        ({"scale": (0.1, 0.2, 0.3)}, TypeError, r"`scale` should be a sequence \(min, max\)"),
        ({"scale": "01"}, TypeError, r"`scale` should be a sequence \(min, max\), but got '01'"),
        ({"scale": (0.1, "0.3")}, TypeError, r"`scale` should be a sequence \(min, max\)"),
        ({"scale": (False, True)}, TypeError, r"`scale` should be a sequence \(min, max\)"),
        ({"ratio": (0.5, None)}, TypeError, r"`ratio` should be a sequence \(min, max\)"),
        ({"ratio": (3.3, 0.3)}, ValueError, r"`ratio` should be an increasing pair in >= 1e-12, but got "
                                            r"\(3.3, 0.3\)"),
        ({"ratio": (0.0, 1.0)}, ValueError, r"`ratio` should be an increasing pair in >= 1e-12"),
        ({"ratio": (-1.0, 1.0)}, ValueError, r"`ratio` should be an increasing pair"),
        ({"num_patches": 0}, ValueError, r"num_patches should be an integer >= 1, but got 0"),
        ({"num_patches": 2.0}, TypeError, r"num_patches should be an integer >= 1, but got float 2.0"),
    ])
    def test_errors(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            sample_erasing_sizes(2, 8, 8, **kwargs)


# -- relevant_centres ---------------------------------------------------------------------------------------------


class TestRelevantCentres:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("top_k, num_patches, seed", [(1, 1, 0), (1, 3, 1), (4, 1, 2), (5, 4, 3), (100, 2, 4)])
    def test_matches_loop(self, dtype, top_k, num_patches, seed):
        rel = random_relevance(48, 7, 9, seed=seed, dtype=dtype, flat_rows=[(3, 0.0), (10, 0.7), (20, -2.5)])
        centres = relevant_centres(rel, top_k, num_patches, generator=seeded(seed + 100))
        draws = torch.rand(48, num_patches, 2, generator=seeded(seed + 100))  # the documented draws
        assert centres.shape == (48, num_patches, 2) and centres.dtype == torch.long
        assert torch.equal(centres, loop_centres(rel, top_k, draws))

    @pytest.mark.parametrize("top_k", [1, 2, 5, 40, 63, 100])
    def test_ties_rank_by_index(self, top_k):
        """Of equally relevant pixels the first in raster order ranks first, as the loop's stable sort and the
        point balls rank them (was: ``topk``'s order, unspecified and device-dependent: [1, 31, 21] for three
        tied maxima)."""
        rel = torch.randint(0, 3, (48, 7, 9), generator=seeded(9)).float()  # many ties at every rank
        centres = relevant_centres(rel, top_k, 4, generator=seeded(10))
        draws = torch.rand(48, 4, 2, generator=seeded(10))
        assert torch.equal(centres, loop_centres(rel, top_k, draws))

    @pytest.mark.parametrize("draws, match", [
        (torch.rand(1, 1, 2), r"centre draws should have shape \(3, 1, 2\), but got \(1, 1, 2\)"),
        (torch.rand(3, 2, 2), r"centre draws should have shape \(3, 1, 2\), but got \(3, 2, 2\)"),
    ])
    def test_draws_of_another_shape(self, draws, match):
        """(Was accepted, broadcast: every sample got sample 0's centre.)"""
        with pytest.raises(ValueError, match=match):
            relevant_centres(torch.rand(3, 4, 4), 1, 1, draws=draws)

    def test_top1_is_the_argmax(self):
        rel = random_relevance(200, 11, 13, seed=5)
        centres = relevant_centres(rel, 1, 3, generator=seeded(5))
        top = rel.flatten(1).argmax(1)
        expected = torch.stack([top // 13, top % 13], -1)[:, None].expand(-1, 3, -1)
        assert torch.equal(centres, expected)

    def test_top_k_centres_among_the_top_k_and_uniform(self):
        n, k, patches = 300, 5, 3
        rel = random_relevance(n, 10, 10, seed=6)
        centres = relevant_centres(rel, k, patches, generator=seeded(6))
        index = centres[..., 0] * 10 + centres[..., 1]  # (n, P)
        ranking = rel.flatten(1).argsort(1, descending=True)
        rank = (ranking[:, None, :] == index[..., None]).int().argmax(-1)  # rank of each centre in its sample
        assert bool((ranking[:, None, :] == index[..., None]).any(-1).all())
        assert int(rank.max()) < k
        counts = torch.bincount(rank.flatten(), minlength=k).double()
        expected = n * patches / k
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 20.0  # 4 degrees of freedom: P(chi2 > 20) ~ 5e-4

    def test_flat_relevance_spreads_over_the_image(self):
        # 8x8 = 64 cells, 200 samples x 32 patches = 6400 centres: expected 100 per cell. Chi-square with 63
        # degrees of freedom has mean 63 and sd 11.2: 63 + 5 sd = 119.
        for value in (0.0, 0.7):
            rel = torch.full((200, 8, 8), value)
            centres = relevant_centres(rel, 1, 32, generator=seeded(7))
            counts = torch.bincount((centres[..., 0] * 8 + centres[..., 1]).flatten(), minlength=64).double()
            assert bool((counts > 0).all())  # every pixel is a centre somewhere
            chi2 = float(((counts - 100) ** 2 / 100).sum())
            assert chi2 < 119.0
            assert bool((centres >= 0).all()) and bool((centres < 8).all())

    def test_flat_rows_alongside_peaked_rows(self):
        rel = random_relevance(6, 5, 5, seed=8, flat_rows=[(1, 0.0), (4, 3.0)])
        centres = relevant_centres(rel, 1, 50, generator=seeded(8))
        for b in (0, 2, 3, 5):
            top = int(rel[b].flatten().argmax())
            assert bool((centres[b] == torch.tensor([top // 5, top % 5])).all())
        for b in (1, 4):
            assert len({tuple(c) for c in centres[b].tolist()}) > 10  # spread, not a fixed pixel

    def test_empty_batch(self):
        assert relevant_centres(torch.zeros(0, 4, 5), 2, 3).shape == (0, 3, 2)

    @pytest.mark.parametrize("top_k, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (None, TypeError)])
    def test_bad_top_k(self, top_k, error):
        with pytest.raises(error, match="top_k should be an integer >= 1, but got"):
            relevant_centres(torch.rand(2, 4, 4), top_k)


# -- box_mask -----------------------------------------------------------------------------------------------------


class TestKernelInputs:
    """Inputs the transforms never pass (they refuse non-finite relevance first) but a direct caller may (found by
    a peer probe)."""

    @pytest.mark.parametrize("top_k", [1, 3])
    def test_nan_relevance_ranks_first(self, top_k):
        # top_k > 1 gathered a padding index ("index 64 is out of bounds"): NaN equals nothing, so fewer than k
        # pixels were chosen. Now ranked above every number, as argmax (top_k = 1) and topk rank it
        rel = torch.rand(2, 8, 8, generator=seeded(0))
        rel[0, 3, 3] = float("nan")
        draws = torch.rand(2, 20, 2, generator=seeded(1))
        centres = relevant_centres(rel, top_k, 20, draws=draws)
        assert centres.shape == (2, 20, 2)
        flat = rel[0].flatten().nan_to_num(nan=0.0)
        allowed = {(3, 3)} | {divmod(int(i), 8) for i in flat.topk(top_k - 1).indices} if top_k > 1 else {(3, 3)}
        assert {tuple(c) for c in centres[0].tolist()} <= allowed
        assert (3, 3) in {tuple(c) for c in centres[0].tolist()}
        assert torch.equal(centres[1], relevant_centres(rel[1:], top_k, 20, draws=draws[1:])[0])

    @pytest.mark.parametrize("top_k", [1, 2])
    def test_bool_relevance_is_ranked_as_numbers(self, top_k):
        # argmax / topk refused bool ("does not support bool"), where normalize_relevance and the ball mask take it
        rel = torch.rand(2, 4, 4, generator=seeded(2)) > 0.5
        rel[:, 0, 0] = False  # (not flat)
        rel[:, 0, 1] = True
        assert torch.equal(relevant_centres(rel, top_k, 5, generator=seeded(3)),
                           relevant_centres(rel.float(), top_k, 5, generator=seeded(3)))

    @pytest.mark.parametrize("num_clouds, error", [(-1, ValueError), (2.0, TypeError), (True, TypeError),
                                                   (None, TypeError)])
    def test_ball_draws_count(self, num_clouds, error):
        # gave torch's "negative dimension" / "empty() takes 1 positional argument"
        with pytest.raises(error, match="num_clouds should be an integer >= 0"):
            ball_draws(num_clouds)

    @pytest.mark.parametrize("valid", [torch.tensor([[2]]), torch.tensor([[1.0]])])
    def test_box_mask_valid_is_bool(self, valid):
        # an integer 2 gave an empty mask silently (2 & True == 0), a float torch's "bitwise_and_cpu"
        with pytest.raises(TypeError, match="valid should be a bool tensor"):
            box_mask(4, 4, torch.tensor([[[1, 1]]]), torch.tensor([[[2, 2]]]), valid)


class TestBoxMask:
    @pytest.mark.parametrize("patches, with_valid, seed", [(1, False, 0), (1, True, 1), (3, True, 2), (4, False, 3)])
    def test_matches_loop(self, patches, with_valid, seed):
        g = seeded(seed)
        batch_size, height, width = 64, 9, 12
        centres = torch.stack([torch.randint(0, height, (batch_size, patches), generator=g),
                               torch.randint(0, width, (batch_size, patches), generator=g)], -1)
        centres[0, 0] = torch.tensor([0, 0])  # corners: clipped on two sides
        centres[1, 0] = torch.tensor([height - 1, width - 1])
        sizes = torch.stack([torch.randint(1, 2 * height, (batch_size, patches), generator=g),
                             torch.randint(1, 2 * width, (batch_size, patches), generator=g)], -1)
        sizes[2, 0] = torch.tensor([1, 1])
        sizes[3, 0] = torch.tensor([2, 4])  # even sizes: the extra row/column is above/left of the centre
        valid = torch.rand(batch_size, patches, generator=g) < 0.7 if with_valid else None
        out = box_mask(height, width, centres, sizes, valid)
        assert out.shape == (batch_size, height, width) and out.dtype == torch.bool
        assert torch.equal(out, loop_box(height, width, centres, sizes, valid))
        assert bool(out[2, centres[2, 0, 0], centres[2, 0, 1]]) or (with_valid and not bool(valid[2, 0]))

    def test_even_and_odd_geometry(self):
        centres = torch.tensor([[[4, 4]], [[4, 4]]])
        sizes = torch.tensor([[[3, 2]], [[2, 3]]])
        out = box_mask(9, 9, centres, sizes)
        assert out[0].nonzero().tolist() == [[r, c] for r in (3, 4, 5) for c in (3, 4)]
        assert out[1].nonzero().tolist() == [[r, c] for r in (3, 4) for c in (3, 4, 5)]

    def test_invalid_patches_erase_nothing(self):
        centres = torch.tensor([[[2, 2], [5, 5]]])
        sizes = torch.tensor([[[3, 3], [3, 3]]])
        out = box_mask(8, 8, centres, sizes, torch.tensor([[False, True]]))
        assert int(out.sum()) == 9 and bool(out[0, 5, 5]) and not bool(out[0, 2, 2])
        assert not bool(box_mask(8, 8, centres, sizes, torch.tensor([[False, False]])).any())

    def test_device(self, device):
        centres = torch.tensor([[[1, 2]]], device=device)
        out = box_mask(4, 5, centres, torch.tensor([[[2, 2]]], device=device))
        assert out.device.type == torch.device(device).type and int(out.sum()) == 4


# -- relevance_erasing_mask ---------------------------------------------------------------------------------------


class TestRelevanceErasingMask:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("kwargs, seed", [
        ({}, 0),
        ({"top_k": 3}, 1),
        ({"num_patches": 3, "top_k": 6}, 2),
        ({"scale": (0.3, 0.9), "ratio": (0.2, 5.0)}, 3),  # many no-fits
        ({"num_patches": 2, "scale": (0.1, 0.2), "ratio": (1.0, 1.0)}, 4),
    ])
    def test_matches_per_sample_reference(self, dtype, kwargs, seed):
        # The documented draw order: all sizes (B, P, 10 tries, 2) first, then the centres (B, P, 2).
        batch_size, height, width = 40, 10, 13
        rel = random_relevance(batch_size, height, width, seed=seed, dtype=dtype, flat_rows=[(5, 0.0), (6, 1.0)])
        out = relevance_erasing_mask(rel, generator=seeded(seed), **kwargs)
        g = seeded(seed)
        patches = kwargs.get("num_patches", 1)
        size_draws = torch.rand(batch_size, patches, TRIES, 2, generator=g)
        centre_draws = torch.rand(batch_size, patches, 2, generator=g)
        sizes, valid = loop_sizes(size_draws, height, width, kwargs.get("scale", (0.02, 0.4)),
                                  kwargs.get("ratio", (0.3, 3.3)), patches)
        centres = loop_centres(rel, kwargs.get("top_k", 1), centre_draws)
        expected = loop_box(height, width, centres, sizes, valid)
        assert out.shape == rel.shape and out.dtype == torch.bool
        assert bool(expected.any())
        assert torch.equal(out, expected)

    def test_same_sizes_exact_box(self):
        # Given the sizes sample_erasing_sizes draws and the centres relevant_centres draws, the mask is exactly
        # the sliced rectangles.
        rel = random_relevance(100, 16, 16, seed=9)
        out = relevance_erasing_mask(rel, num_patches=2, top_k=4, generator=seeded(9))
        g = seeded(9)
        sizes, valid = sample_erasing_sizes(100, 16, 16, num_patches=2, generator=g)
        centres = relevant_centres(rel, 4, 2, generator=g)
        assert torch.equal(out, loop_box(16, 16, centres, sizes, valid))

    @pytest.mark.parametrize("num_patches", [1, 3])
    def test_top1_pixel_always_erased(self, num_patches):
        n = 500
        rel = random_relevance(n, 16, 16, seed=10)
        out = relevance_erasing_mask(rel, top_k=1, num_patches=num_patches, generator=seeded(10))
        erased = out.flatten(1).any(1)
        top = rel.flatten(1).argmax(1)
        assert bool(out.flatten(1)[torch.arange(n), top][erased].all())
        _, valid = sample_erasing_sizes(n, 16, 16, num_patches=num_patches, generator=seeded(10))
        assert torch.equal(erased, valid.any(1))  # erased exactly when a rectangle fits
        assert float(erased.float().mean()) > 0.95

    def test_area_fraction_matches_scale(self):
        # Relevance peaked at the centre of a 64x64 image and ratio (0.5, 2): the largest side is
        # round(sqrt(0.4 * 2) * 64) = 57 and the rectangle [32 - 28, 32 - 28 + 57) stays inside, so nothing is
        # clipped and every first try fits. The erased fraction is then U(0.02, 0.4) up to the rounding of h
        # and w: |h w - A| <= (h + w) / 2 + 1/4 <= 43.25 pixels = 0.0106 of the image.
        n, size, low, high = 4000, 64, 0.02, 0.4
        rel = peaked_relevance(n, size, size, 32, 32)
        out = relevance_erasing_mask(rel, scale=(low, high), ratio=(0.5, 2.0), generator=seeded(11))
        g = seeded(11)
        sizes, valid = sample_erasing_sizes(n, size, size, scale=(low, high), ratio=(0.5, 2.0), generator=g)
        assert bool(valid.all())
        counts = out.flatten(1).sum(1)
        assert torch.equal(counts, sizes[:, 0].prod(-1))  # no clipping: the full h x w rectangle
        rows, cols = out.any(2), out.any(1)
        assert not bool(rows[:, 0].any() | rows[:, -1].any() | cols[:, 0].any() | cols[:, -1].any())
        fraction = counts.double() / size**2
        slack = 43.25 / size**2
        sd = (high - low) / math.sqrt(12)
        assert abs(float(fraction.mean()) - (low + high) / 2) < 5 * sd / math.sqrt(n) + slack
        for q in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95):
            tolerance = 5 * math.sqrt(q * (1 - q) / n) * (high - low) + slack  # 5 sd of the quantile + rounding
            assert abs(float(fraction.quantile(q)) - (low + q * (high - low))) < tolerance, q
        assert float(fraction.min()) >= low - slack and float(fraction.max()) <= high + slack
        unit = ((fraction - low) / (high - low)).clamp(0, 1)
        assert ks_uniform(unit) < 1.95 / math.sqrt(n) + slack / (high - low)

    def test_patch_area_divided(self):
        # num_patches = 4 rectangles at distinct, far apart top pixels of a large image: no overlap, no
        # clipping; the total erased fraction is still about U(scale) (sum of 4 patches of area U(scale) / 4).
        n, size = 300, 96
        rel = torch.zeros(n, size, size)
        for r, c in ((24, 24), (24, 72), (72, 24), (72, 72)):
            rel[:, r, c] = 1.0 + r / 100 + c / 1000  # four distinct tops
        out = relevance_erasing_mask(rel, scale=(0.1, 0.3), ratio=(0.5, 2.0), top_k=4, num_patches=4,
                                     generator=seeded(12))
        g = seeded(12)
        sizes, valid = sample_erasing_sizes(n, size, size, scale=(0.1, 0.3), ratio=(0.5, 2.0), num_patches=4,
                                            generator=g)
        centres = relevant_centres(rel, 4, 4, generator=g)
        assert bool(valid.all())
        # each patch's side <= round(sqrt(0.3 / 4 * 2) * 96) = 37 < 48: a patch stays in its quadrant
        assert int(sizes.max()) <= 37
        patch_pixels = sizes.prod(-1)
        sd = 0.2 / math.sqrt(12) / 4 / math.sqrt(4 * n)
        assert abs(float(patch_pixels.double().mean()) / size**2 - 0.2 / 4) < 5 * sd + 37.25 / size**2
        total = out.flatten(1).sum(1)
        distinct = torch.tensor([len({tuple(c) for c in centres[b].tolist()}) for b in range(n)])
        assert bool((total <= patch_pixels.sum(1)).all())  # overlapping patches are erased once
        assert torch.equal(total[distinct == 4], patch_pixels.sum(1)[distinct == 4])  # disjoint: areas add up
        assert 0 < int((distinct == 4).sum()) < n

    def test_flat_relevance_random_centres(self):
        # A flat sample is still erased, its rectangle somewhere random: the centre pixel covers the image.
        rel = torch.zeros(400, 6, 6)
        out = relevance_erasing_mask(rel, scale=(0.02, 0.05), ratio=(1.0, 1.0), generator=seeded(13))
        assert bool(out.flatten(1).any(1).all())
        assert bool(out.any(0).all())  # every pixel erased in some sample

    def test_reproducible_and_advancing(self):
        rel = random_relevance(8, 12, 12, seed=14)
        a = relevance_erasing_mask(rel, generator=seeded(1))
        assert torch.equal(a, relevance_erasing_mask(rel, generator=seeded(1)))
        g = seeded(1)
        first, second = relevance_erasing_mask(rel, top_k=10, generator=g), relevance_erasing_mask(rel, top_k=10,
                                                                                                   generator=g)
        assert not torch.equal(first, second)

    def test_empty_batch_and_device(self, device):
        assert relevance_erasing_mask(torch.zeros(0, 5, 6, device=device)).shape == (0, 5, 6)
        out = relevance_erasing_mask(torch.rand(3, 8, 8, device=device), generator=seeded(0, device))
        assert out.device.type == torch.device(device).type

    @pytest.mark.parametrize("shape", [(2, 0, 5), (2, 4, 0), (0, 0, 0)])
    def test_images_without_pixels(self, shape):
        # (B, 0, W) and (B, H, 0) raised "index -1 is out of bounds" (no pixel to centre on): an all-False mask, the
        # same numbers drawn from the generator as for any size, the same argument checks
        g = seeded(0)
        out = relevance_erasing_mask(torch.zeros(shape), num_patches=2, generator=g)
        assert out.shape == shape and out.dtype == torch.bool and not bool(out.any())
        expected = seeded(0)
        erasing_draws(shape[0], 2, generator=expected)
        assert torch.equal(g.get_state(), expected.get_state())
        with pytest.raises(ValueError, match="top_k"):
            relevance_erasing_mask(torch.zeros(shape), top_k=0)

    def test_no_host_sync(self):
        # Meta tensors carry no data: any .item(), bool() or data-dependent shape would fail here.
        out = relevance_erasing_mask(torch.rand(4, 8, 8, device="meta"), top_k=3, num_patches=2)
        assert out.shape == (4, 8, 8) and out.device.type == "meta"

    @pytest.mark.parametrize("shape", [(8, 8), (2, 1, 8, 8), (8,)])
    def test_bad_shape(self, shape):
        with pytest.raises(ValueError, match=r"relevance should have shape \(B, H, W\), but got"):
            relevance_erasing_mask(torch.rand(shape))

    @pytest.mark.parametrize("kwargs, error, match", [
        ({"scale": (0.5, 0.1)}, ValueError, r"`scale` should be an increasing pair"),
        ({"ratio": (2.0, 1.0)}, ValueError, r"`ratio` should be an increasing pair"),
        ({"top_k": 0}, ValueError, r"top_k should be an integer >= 1, but got 0"),
        ({"num_patches": 0}, ValueError, r"num_patches should be an integer >= 1, but got 0"),
    ])
    def test_errors(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            relevance_erasing_mask(torch.rand(2, 8, 8), **kwargs)


# -- relevance_ball_mask ------------------------------------------------------------------------------------------


def make_clouds(sizes, *, seed=0, dtype=torch.float32, shuffle=False, flat_cloud=None, dims=3):
    g = seeded(seed)
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    pos = torch.randn(batch.shape[0], dims, generator=g, dtype=dtype) * torch.rand(dims, generator=g, dtype=dtype)
    rel = torch.randn(batch.shape[0], generator=g, dtype=dtype)
    if flat_cloud is not None:
        rel[batch == flat_cloud] = 0.3
    if shuffle:
        perm = torch.randperm(batch.shape[0], generator=g)
        batch, pos, rel = batch[perm], pos[perm], rel[perm]
    return rel, pos, batch


class TestRelevanceBallMask:
    @pytest.mark.parametrize("shape", [(1, 3), (3, 1), (3, 3, 1)])
    def test_draws_of_another_shape(self, shape):
        """(Draws for one cloud of three were broadcast; (3, 1) gave a bare IndexError.)"""
        with pytest.raises(ValueError, match=r"ball draws should have shape \(3, 3\), but got"):
            relevance_ball_mask(torch.rand(3, 5), torch.rand(3, 5, 3), draws=torch.rand(*shape))

    @pytest.mark.parametrize("dtype, drawn", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                              (torch.float32, torch.float32), (torch.float64, torch.float64)])
    def test_draws_at_least_float32(self, dtype, drawn):
        """Drawn in bfloat16 for bfloat16 points, the centre rank among 1000 candidates reached 496 of them in 4000
        draws (8 bits of mantissa); at least float32 now."""
        draws = ball_draws(4000, dtype=dtype, generator=seeded(0))
        assert draws.dtype == drawn
        assert (draws[:, 0] * 1000).long().unique().numel() > 950

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("radius, top_k, seed", [((0.1, 0.3), 1, 0), ((0.2, 0.5), 3, 1), ((0.0, 1.0), 50, 2)])
    def test_dense_matches_loop(self, dtype, radius, top_k, seed):
        batch_size, n = 12, 30
        g = seeded(seed)
        pos = torch.randn(batch_size, n, 3, generator=g, dtype=dtype)
        rel = torch.randn(batch_size, n, generator=g, dtype=dtype)
        rel[4] = 0.0  # a flat cloud: random centre among all its points
        out = relevance_ball_mask(rel, pos, radius=radius, top_k=top_k, generator=seeded(seed + 50))
        draws = torch.rand(batch_size, 3, generator=seeded(seed + 50), dtype=dtype)  # the documented draws
        expected = loop_ball(rel, pos, draws, radius, top_k)
        assert out.shape == (batch_size, n) and out.dtype == torch.bool
        assert bool(expected.any()) and bool((~expected).any())
        assert torch.equal(out, expected)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shuffle", [False, True])
    @pytest.mark.parametrize("top_k, seed", [(1, 3), (4, 4)])
    def test_grouped_matches_loop(self, dtype, shuffle, top_k, seed):
        sizes = (5, 17, 1, 9, 30, 2)
        rel, pos, batch = make_clouds(sizes, seed=seed, dtype=dtype, shuffle=shuffle, flat_cloud=3)
        out = relevance_ball_mask(rel, pos, radius=(0.1, 0.6), top_k=top_k, generator=seeded(seed),
                                  batch=batch, num_segments=len(sizes))
        draws = torch.rand(len(sizes), 3, generator=seeded(seed), dtype=dtype)
        expected = loop_ball(rel, pos, draws, (0.1, 0.6), top_k, batch, len(sizes))
        assert out.shape == rel.shape and out.dtype == torch.bool
        assert torch.equal(out, expected)

    def test_grouped_with_empty_trailing_cloud(self):
        rel, pos, batch = make_clouds((6, 4), seed=5)
        out = relevance_ball_mask(rel, pos, generator=seeded(5), batch=batch, num_segments=3)
        draws = torch.rand(3, 3, generator=seeded(5))
        assert torch.equal(out, loop_ball(rel, pos, draws, (0.1, 0.3), 1, batch, 3))

    def test_dense_equals_grouped_and_unsorted(self):
        batch_size, n = 7, 25
        g = seeded(6)
        pos = torch.randn(batch_size, n, 3, generator=g)
        rel = torch.randn(batch_size, n, generator=g)
        dense = relevance_ball_mask(rel, pos, radius=(0.2, 0.4), top_k=3, generator=seeded(7))
        batch = torch.arange(batch_size).repeat_interleave(n)
        grouped = relevance_ball_mask(rel.reshape(-1), pos.reshape(-1, 3), radius=(0.2, 0.4), top_k=3,
                                      generator=seeded(7), batch=batch, num_segments=batch_size)
        assert torch.equal(grouped, dense.reshape(-1))
        perm = torch.randperm(batch_size * n, generator=g)
        unsorted = relevance_ball_mask(rel.reshape(-1)[perm], pos.reshape(-1, 3)[perm], radius=(0.2, 0.4), top_k=3,
                                       generator=seeded(7), batch=batch[perm], num_segments=batch_size)
        assert torch.equal(unsorted, dense.reshape(-1)[perm])  # distinct relevance: the same centres

    def test_top1_always_dropped(self):
        g = seeded(8)
        pos = torch.randn(200, 20, 3, generator=g)
        rel = torch.randn(200, 20, generator=g)
        out = relevance_ball_mask(rel, pos, radius=(0.0, 0.05), top_k=1, generator=g)
        assert bool(out[torch.arange(200), rel.argmax(1)].all())

    def test_top_k_centres(self):
        # radius 0: only the centre (no duplicate positions) is dropped; it is one of the top k, uniformly.
        n, k = 600, 4
        g = seeded(9)
        pos = torch.randn(n, 15, 3, generator=g)
        rel = torch.randn(n, 15, generator=g)
        out = relevance_ball_mask(rel, pos, radius=(0.0, 0.0), top_k=k, generator=g)
        assert torch.equal(out.sum(1), torch.ones(n, dtype=torch.long))
        rank = (rel.argsort(1, descending=True) == out.int().argmax(1, keepdim=True)).int().argmax(1)
        counts = torch.bincount(rank, minlength=15).double()
        assert int(counts[k:].sum()) == 0
        chi2 = float(((counts[:k] - n / k) ** 2 / (n / k)).sum())
        assert chi2 < 17.0  # 3 degrees of freedom: P(chi2 > 17) ~ 7e-4

    def test_radius_relative_to_bounding_box(self):
        # Points on a segment of length 1 (diagonal 1), the most relevant at one end: the dropped fraction of a
        # cloud of 201 points is the radius (up to 1/200), and the radius is U(0.1, 0.3).
        n, m, low, high = 2000, 201, 0.1, 0.3
        t = torch.linspace(0, 1, m, dtype=torch.float64)
        pos = torch.stack([t, torch.zeros_like(t), torch.zeros_like(t)], -1).expand(n, m, 3)
        rel = (1 - t).expand(n, m)
        out = relevance_ball_mask(rel, pos, radius=(low, high), generator=seeded(10))
        fraction = (out.sum(1).double() - 1) / (m - 1)  # the dropped points are t <= r
        assert float(fraction.min()) >= low - 1 / (m - 1) and float(fraction.max()) <= high + 1 / (m - 1)
        assert abs(float(fraction.mean()) - (low + high) / 2) < 5 * (high - low) / math.sqrt(12 * n) + 1 / (m - 1)
        unit = ((fraction - low) / (high - low)).clamp(0, 1)
        assert ks_uniform(unit) < 1.95 / math.sqrt(n) + 1 / ((m - 1) * (high - low))
        # scaling and translating a cloud does not change its mask: the radius follows the bounding box
        moved = relevance_ball_mask(rel, pos * 7.5 - 3.0, radius=(low, high), generator=seeded(10))
        assert torch.equal(moved, out)
        # per cloud, the diagonal of its own box: one cloud 100x larger does not change the others
        other = pos.clone()
        other[0] = other[0] * 100
        assert torch.equal(relevance_ball_mask(rel, other, radius=(low, high), generator=seeded(10)), out)

    def test_radius_extremes(self):
        g = seeded(11)
        pos = torch.randn(10, 12, 3, generator=g)
        rel = torch.randn(10, 12, generator=g)
        assert bool(relevance_ball_mask(rel, pos, radius=(1.0, 1.0), generator=g).all())  # diagonal covers all
        zero = relevance_ball_mask(rel, pos, radius=(0.0, 0.0), generator=g)
        assert torch.equal(zero, torch.nn.functional.one_hot(rel.argmax(1), 12).bool())

    def test_flat_cloud_random_centre(self):
        n = 1200
        pos = torch.randn(1, 6, 3, generator=seeded(12)).expand(n, 6, 3)
        rel = torch.zeros(n, 6)
        out = relevance_ball_mask(rel, pos, radius=(0.0, 0.0), generator=seeded(12))
        counts = out.sum(0).double()
        assert torch.equal(out.sum(1), torch.ones(n, dtype=torch.long))
        assert float(((counts - n / 6) ** 2 / (n / 6)).sum()) < 20.5  # 5 dof: P ~ 1e-3

    def test_empty_and_meta(self):
        assert relevance_ball_mask(torch.zeros(0, 5), torch.zeros(0, 5, 3)).shape == (0, 5)
        assert relevance_ball_mask(torch.zeros(3, 0), torch.zeros(3, 0, 3)).shape == (3, 0)
        out = relevance_ball_mask(torch.rand(2, 9, device="meta"), torch.rand(2, 9, 3, device="meta"), top_k=2)
        assert out.shape == (2, 9) and out.device.type == "meta"  # no host synchronisation
        out = relevance_ball_mask(torch.rand(9, device="meta"), torch.rand(9, 3, device="meta"),
                                  batch=torch.zeros(9, dtype=torch.long, device="meta"), num_segments=2)
        assert out.shape == (9,)

    def test_device(self, device):
        rel, pos, batch = make_clouds((4, 6), seed=13)
        out = relevance_ball_mask(rel.to(device), pos.to(device), generator=seeded(13, device),
                                  batch=batch.to(device), num_segments=2)
        assert out.device.type == torch.device(device).type and out.shape == (10,)

    @pytest.mark.parametrize("kwargs, error, match", [
        ({"radius": (0.3, 0.1)}, ValueError, r"`radius` should be an increasing pair in >= 0.0, but got \(0.3, 0.1\)"),
        ({"radius": (-0.1, 0.1)}, ValueError, r"`radius` should be an increasing pair"),
        ({"radius": 0.2}, TypeError, r"`radius` should be a sequence \(min, max\)"),
        ({"radius": "12"}, TypeError, r"`radius` should be a sequence \(min, max\)"),
        ({"top_k": 0}, ValueError, r"top_k should be an integer >= 1, but got 0"),
        ({"top_k": 2.0}, TypeError, r"top_k should be an integer >= 1, but got float 2.0"),
        ({"batch": torch.zeros(10, dtype=torch.long)}, ValueError, r"num_segments is required with batch"),
    ])
    def test_errors(self, kwargs, error, match):
        rel = torch.rand(2, 5) if "batch" not in kwargs else torch.rand(10)
        pos = torch.rand(*rel.shape, 3)
        with pytest.raises(error, match=match):
            relevance_ball_mask(rel, pos, **kwargs)

    def test_integer_positions(self):
        # gave torch's "value cannot be converted to type int64_t without overflow"
        with pytest.raises(TypeError, match=r"pos should be a floating-point tensor .* got dtype torch.int64"):
            relevance_ball_mask(torch.rand(2, 5), torch.randint(0, 3, (2, 5, 3)))
