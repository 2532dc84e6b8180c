"""Tests of the pure mask kernels: normalize_relevance, relevance_dropout_mask, fill_dropped, sample_coins."""

from __future__ import annotations

import math

import pytest
import torch

from reldrop_transforms.functional import (
    fill_dropped,
    fill_points,
    normalize_relevance,
    relevance_dropout_mask,
    sample_coins,
    uniform_like,
)

FLOAT_DTYPES = [torch.float32, torch.float64]


# ----------------------------------------------------------------------------------------------------------------
# Slow, obviously-correct references (plain Python floats, one sample at a time).
# ----------------------------------------------------------------------------------------------------------------


def reference_normalize_row(row: list[float], eps: float) -> list[float]:
    """METHOD.md section 1, step 2, for one sample; a span within ``eps`` of the magnitude counts as flat."""
    low, high = min(row), max(row)
    if high - low <= eps * max(abs(high), abs(low)):
        return [0.0] * len(row)
    return [(r - low) / (high - low) for r in row]


def reference_scores(relevance: torch.Tensor, noise: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``alpha * U + (1 - alpha) * Rn`` per sample and element, in float64."""
    dtype = relevance.dtype if relevance.is_floating_point() else torch.float32
    eps = torch.finfo(dtype).eps
    rows = relevance.detach().cpu().double().reshape(relevance.shape[0], -1).tolist()
    noise_rows = None if noise is None else noise.detach().cpu().double().reshape(relevance.shape[0], -1).tolist()
    scores = []
    for b, row in enumerate(rows):
        rn = reference_normalize_row(row, eps)
        scores.append([
            alpha * (noise_rows[b][i] if noise_rows is not None else 0.0) + (1.0 - alpha) * rn[i]
            for i in range(len(row))
        ])
    return torch.tensor(scores, dtype=torch.float64).reshape(relevance.shape)


def drop_probability(r: float, alpha: float, beta: float) -> float:
    """``P(drop | Rn = r) = clip((beta - (1 - alpha) * (1 - r)) / alpha, 0, 1)`` for ``alpha > 0``."""
    return min(max((beta - (1.0 - alpha) * (1.0 - r)) / alpha, 0.0), 1.0)


def make_relevance(seed: int, shape=(5, 7, 9), dtype=torch.float32, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rel = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0
    rel[1] = 2.5  # a flat row
    rel[2] = 0.0  # an all-zero row
    return rel.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------


class TestNormalizeRelevance:
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    def test_matches_reference(self, device, dtype):
        rel = make_relevance(0, dtype=dtype, device=device)
        out = normalize_relevance(rel)
        expected = reference_scores(rel, None, alpha=0.0)  # alpha = 0: the scores are Rn itself
        assert out.shape == rel.shape
        assert out.dtype == dtype
        assert out.device == rel.device
        torch.testing.assert_close(out.cpu().double(), expected, rtol=0, atol=1e-6)

    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    def test_per_sample_min_max(self, device, dtype):
        g = torch.Generator().manual_seed(1)
        rel = (torch.randn(6, 3, 4, 5, generator=g) * torch.arange(1, 7).view(6, 1, 1, 1) - 2.0).to(device, dtype)
        out = normalize_relevance(rel)
        flat = out.reshape(6, -1)
        assert out.shape == rel.shape
        assert bool(((flat >= 0) & (flat <= 1)).all())
        torch.testing.assert_close(flat.amin(1), torch.zeros(6, dtype=dtype, device=device))
        torch.testing.assert_close(flat.amax(1), torch.ones(6, dtype=dtype, device=device))
        # Each row on its own: scaling and shifting one sample changes no other sample and not its own ranking.
        rel2 = rel.clone()
        rel2[0] = rel2[0] * 100.0 + 7.0
        out2 = normalize_relevance(rel2)
        torch.testing.assert_close(out2, out)

    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    def test_flat_and_zero_rows_give_zero_never_nan(self, device, dtype):
        rel = torch.stack([
            torch.zeros(4, 4),
            torch.full((4, 4), 3.0),
            torch.full((4, 4), -1e6),
            torch.full((4, 4), 1e-30),
            torch.arange(16.0).reshape(4, 4),
        ]).to(device, dtype)
        out = normalize_relevance(rel)
        assert not bool(out.isnan().any())
        assert bool((out[:4] == 0).all())
        assert float(out[4].max()) == 1.0 and float(out[4].min()) == 0.0

    @pytest.mark.parametrize("dtype, big", [(torch.float16, 4e4), (torch.float32, 3e38), (torch.bfloat16, 3e38)])
    def test_range_beyond_the_dtype(self, device, dtype, big):
        # max - min overflowed to inf: the row became [nan, 0, 0] (the docs promise [0, 1], never NaN), and with
        # alpha = 0 the most relevant element was never dropped
        rows = torch.tensor([[big, -big, 0.0], [1.0, 3.0, 2.0]], dtype=dtype, device=device)
        expected = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]], dtype=dtype, device=device)
        torch.testing.assert_close(normalize_relevance(rows), expected, rtol=0, atol=0)
        assert relevance_dropout_mask(rows, alpha=0.0, beta=0.5).tolist() == [[True, False, True], [False, True, True]]
        flat = torch.tensor([1.0, 3.0, 2.0, big, -big], dtype=dtype, device=device)
        torch.testing.assert_close(normalize_relevance(flat, batch=torch.tensor([0, 0, 0, 1, 1], device=device),
                                                       num_segments=2),
                                   torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0], dtype=dtype, device=device), rtol=0, atol=0)

    def test_rounding_noise_is_flat(self, device):
        # A span of one ulp on a large value is rounding noise: no ranking, all zero.
        row = torch.full((10,), 1e6, dtype=torch.float32, device=device)
        row[3] = torch.nextafter(row[3], torch.tensor(math.inf, device=device))
        assert float(row[3] - row[0]) > 0
        out = normalize_relevance(row[None])
        assert bool((out == 0).all())

    @pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
    def test_integer_input_promoted(self, device, dtype):
        rel = torch.tensor([[0, 2, 4], [5, 5, 5]], dtype=dtype, device=device)
        out = normalize_relevance(rel)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]], device=device))

    def test_shapes(self, device):
        for shape in [(3,), (3, 5), (2, 3, 4, 5), (0, 4)]:
            rel = torch.randn(shape, device=device)
            assert normalize_relevance(rel).shape == rel.shape
        # (3,) is 3 samples of one element each: each is flat.
        assert bool((normalize_relevance(torch.tensor([1.0, 2.0, 3.0])) == 0).all())

    def test_input_not_modified(self):
        rel = torch.randn(3, 4, 4)
        before, version = rel.clone(), rel._version
        normalize_relevance(rel)
        assert rel._version == version
        assert torch.equal(rel, before)

    def test_errors(self):
        with pytest.raises(TypeError, match="should be a torch.Tensor"):
            normalize_relevance([[1.0, 2.0]])
        with pytest.raises(ValueError, match="batch dimension"):
            normalize_relevance(torch.tensor(1.0))
        with pytest.raises(TypeError, match="should be real"):
            normalize_relevance(torch.randn(2, 3, dtype=torch.complex64))


    def test_non_finite_rows_as_documented(self):
        # (not checked: a synchronisation; the transforms check the relevance they compute)
        inf, nan = float("inf"), float("nan")
        out = normalize_relevance(torch.tensor([[1.0, inf, 3.0], [1.0, -inf, 3.0], [1.0, nan, 3.0], [1.0, 2.0, 3.0]]))
        assert torch.equal(out[:2], torch.zeros(2, 3))
        assert bool(out[2].isnan().all())
        assert torch.equal(out[3], torch.tensor([0.0, 0.5, 1.0]))

class TestUniformLike:
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    def test_same_noise_as_torch_rand(self, device, dtype):
        ref = torch.empty(4, 5, 6, dtype=dtype, device=device)
        noise = uniform_like(ref, torch.Generator(device=device).manual_seed(3))
        expected = torch.rand(ref.shape, generator=torch.Generator(device=device).manual_seed(3), dtype=dtype,
                              device=device)
        assert noise.shape == ref.shape and noise.dtype == dtype and noise.device == ref.device
        assert torch.equal(noise, expected)
        assert bool(((noise >= 0) & (noise < 1)).all())

    def test_waits_for_copies_to_the_host(self):
        # a copy to the host is waited for (a non-blocking one from a CUDA generator's noise returns before its values
        # arrive); one to a device need not be. Recorded at Tensor.to (no GPU here: a "meta" reference for the device)
        from helpers import RecordNonBlocking

        for reference, blocking in ((torch.empty(3), True), (torch.empty(3, device="meta"), False)):
            with RecordNonBlocking() as record:
                uniform_like(reference, torch.Generator().manual_seed(0))
            assert record.flags == [not blocking]

    @pytest.mark.parametrize("reference", [torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool), [0.0]])
    def test_reference_must_be_a_floating_tensor(self, reference):
        # an integer one gave torch's '"check_uniform_bounds" not implemented for 'Long''
        with pytest.raises(TypeError, match="reference should be a"):
            uniform_like(reference)

    def test_cpu_generator_drives_any_device(self, device):
        ref = torch.empty(3, 4, device=device)
        noise = uniform_like(ref, torch.Generator().manual_seed(5))
        assert noise.device == ref.device
        assert torch.equal(noise.cpu(), torch.rand(3, 4, generator=torch.Generator().manual_seed(5)))


class TestRelevanceDropoutMask:
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("alpha, beta", [(0.3, 0.5), (0.5, 0.5), (1.0, 0.15), (0.7, 0.85), (0.2, 0.0),
                                             (0.4, 1.0)])
    def test_matches_per_sample_reference(self, device, dtype, seed, alpha, beta):
        rel = make_relevance(seed, dtype=dtype, device=device)
        mask = relevance_dropout_mask(rel, alpha, beta, generator=torch.Generator(device=device).manual_seed(seed))
        noise = torch.rand(rel.shape, generator=torch.Generator(device=device).manual_seed(seed), dtype=dtype,
                           device=device)
        scores = reference_scores(rel, noise, alpha)
        expected = scores >= 1.0 - beta
        assert mask.shape == rel.shape
        assert mask.dtype == torch.bool
        assert mask.device == rel.device
        # Only elements within rounding distance of the threshold may disagree with the float64 reference.
        tie = (scores - (1.0 - beta)).abs() <= 8 * torch.finfo(dtype).eps
        assert int(tie.sum()) <= 2
        assert torch.equal(mask.cpu()[~tie], expected[~tie])
        assert 0 < int(expected.sum()) or beta == 0.0

    @pytest.mark.parametrize("beta", [0.0, 0.15, 0.5, 0.85, 1.0])
    def test_alpha_zero_is_deterministic_threshold(self, device, beta):
        # Rn takes exact grid values: (k - 0) / (10 - 0) per row.
        grid = torch.arange(11, dtype=torch.float64)
        rel = torch.stack([grid, grid.flip(0), torch.zeros(11)]).to(device)
        rn = rel / 10.0
        rn[2] = 0.0
        expected = rn >= 1.0 - beta
        g = torch.Generator(device=device).manual_seed(0)
        state = g.get_state()
        with_gen = relevance_dropout_mask(rel, 0.0, beta, generator=g)
        without = relevance_dropout_mask(rel, 0.0, beta)
        assert torch.equal(with_gen, expected)
        assert torch.equal(without, expected)
        assert torch.equal(g.get_state(), state)  # no noise drawn at alpha = 0

    @pytest.mark.parametrize("alpha", [1e-9, 1e-7, 1e-4, 0.3, 1.0])
    def test_beta_zero_drops_nothing_when_alpha_is_positive(self, device, alpha):
        """P(drop) = 0 at beta = 0 (alpha > 0): the most relevant element's score (1 - alpha) + alpha * U, below 1
        in exact arithmetic, rounded to 1 in float32 for tiny alpha, and it was dropped (one element per row at
        alpha = 1e-9). The noise is still drawn: the generator advances as for any beta."""
        rel = make_relevance(3, device=device)
        g, twin = torch.Generator(device=device).manual_seed(0), torch.Generator(device=device).manual_seed(0)
        assert not relevance_dropout_mask(rel, alpha, 0.0, generator=g).any()
        relevance_dropout_mask(rel, alpha, 0.5, generator=twin)
        assert torch.equal(g.get_state(), twin.get_state())

    def test_alpha_zero_matches_reference(self, device):
        rel = make_relevance(7, device=device)
        scores = reference_scores(rel, None, 0.0)
        for beta in (0.1, 0.3, 0.6):
            mask = relevance_dropout_mask(rel, 0.0, beta)
            tie = (scores - (1.0 - beta)).abs() <= 1e-6
            assert torch.equal(mask.cpu()[~tie], (scores >= 1.0 - beta)[~tie])

    @pytest.mark.parametrize(
        "alpha, beta",
        [(1.0, 0.5), (1.0, 0.15), (1.0, 0.85), (0.5, 0.5), (0.3, 0.5), (0.5, 0.85), (0.8, 0.15), (0.3, 0.2)],
    )
    def test_drop_probability_closed_form(self, alpha, beta):
        grid = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)  # includes 0 and 1, so Rn == relevance
        repeats = 2000
        rel = grid.repeat(10, repeats)  # (10, 11 * repeats): 10 * repeats draws per grid value
        mask = relevance_dropout_mask(rel, alpha, beta, generator=torch.Generator().manual_seed(123))
        rate = mask.reshape(10, repeats, 11).double().mean(dim=(0, 1))
        n = 10 * repeats
        for r, observed in zip(grid.tolist(), rate.tolist()):
            p = drop_probability(r, alpha, beta)
            if alpha == 1.0:
                assert p == beta  # plain random dropout at rate beta
            if alpha == 0.5 and beta == 0.5:
                assert p == pytest.approx(r)  # drops with probability Rn
            tol = 5.0 * math.sqrt(p * (1.0 - p) / n) + 2.0 / n
            assert abs(observed - p) <= tol, (r, observed, p, tol)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_half_precision_relevance_keeps_the_probabilities(self, dtype):
        # the rule ran in the relevance's dtype: 1 - beta rounded to 1 (bfloat16, beta = 1e-3: no drop at all at
        # alpha = 1, where the rate is beta), and the score rounded past the threshold (alpha = 0.9, beta = 0.05,
        # r = 0.5 dropped 0.4 % in bfloat16, where the rule gives 0). Now in float32, with float32 noise: the mask
        # of the float32 relevance of the same values
        n = 400_000
        rel = torch.rand(4, n // 4, generator=torch.Generator().manual_seed(0)).to(dtype)
        for alpha, beta in ((1.0, 1e-3), (0.9, 0.05), (0.3, 0.5)):
            mask = relevance_dropout_mask(rel, alpha, beta, generator=torch.Generator().manual_seed(1))
            reference = relevance_dropout_mask(rel.float(), alpha, beta, generator=torch.Generator().manual_seed(1))
            assert torch.equal(mask, reference)
        rate = relevance_dropout_mask(rel, 1.0, 1e-3, generator=torch.Generator().manual_seed(2)).double().mean()
        assert abs(float(rate) - 1e-3) <= 5 * math.sqrt(1e-3 / n)
        half = torch.full((2, 1000), 0.5).to(dtype)
        half[:, 0], half[:, 1] = 0.0, 1.0  # Rn = 0.5 elsewhere
        mask = relevance_dropout_mask(half, 0.9, 0.05, generator=torch.Generator().manual_seed(3))
        assert not bool(mask[:, 2:].any())  # P(drop | r = 0.5) = clip((0.05 - 0.1 * 0.5) / 0.9, 0, 1) = 0

    def test_reproducible_with_generator(self, device):
        rel = make_relevance(0, device=device)
        a = relevance_dropout_mask(rel, 0.3, 0.5, generator=torch.Generator(device=device).manual_seed(11))
        b = relevance_dropout_mask(rel, 0.3, 0.5, generator=torch.Generator(device=device).manual_seed(11))
        c = relevance_dropout_mask(rel, 0.3, 0.5, generator=torch.Generator(device=device).manual_seed(12))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_cpu_generator_with_device_input(self, device):
        rel = make_relevance(0, device=device)
        mask = relevance_dropout_mask(rel, 0.5, 0.5, generator=torch.Generator().manual_seed(4))
        noise = torch.rand(rel.shape, generator=torch.Generator().manual_seed(4))
        scores = reference_scores(rel, noise, 0.5)
        tie = (scores - 0.5).abs() <= 1e-6
        assert mask.device == rel.device and mask.dtype == torch.bool
        assert torch.equal(mask.cpu()[~tie], (scores >= 0.5)[~tie])

    def test_integer_relevance(self, device):
        rel = torch.tensor([[0, 1, 2, 3, 4], [3, 3, 3, 3, 3]], device=device)
        mask = relevance_dropout_mask(rel, 0.0, 0.5)
        assert mask.dtype == torch.bool
        assert mask.tolist() == [[False, False, True, True, True], [False] * 5]
        noisy = relevance_dropout_mask(rel, 0.5, 0.5, generator=torch.Generator(device=device).manual_seed(0))
        assert noisy.shape == rel.shape and noisy.dtype == torch.bool

    def test_no_nan_relevance_from_flat_rows(self, device):
        rel = torch.zeros(3, 8, 8, device=device)
        # Flat rows have Rn = 0: nothing is dropped below beta = 1 - alpha at alpha * U < alpha.
        assert not bool(relevance_dropout_mask(rel, 0.3, 0.5).any())
        assert not bool(relevance_dropout_mask(rel, 0.0, 0.99).any())
        assert bool(relevance_dropout_mask(rel, 0.0, 1.0).all())

    def test_input_not_modified(self):
        rel = torch.randn(2, 5, 5)
        before, version = rel.clone(), rel._version
        relevance_dropout_mask(rel, 0.3, 0.5)
        assert rel._version == version and torch.equal(rel, before)

    @pytest.mark.parametrize("name", ["alpha", "beta"])
    @pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
    def test_out_of_interval(self, name, bad):
        kwargs = {"alpha": 0.3, "beta": 0.5, name: bad}
        with pytest.raises(ValueError, match=rf"`{name}` should be in the interval \[0.0, 1.0\], but got"):
            relevance_dropout_mask(torch.rand(2, 4), **kwargs)

    @pytest.mark.parametrize("name", ["alpha", "beta"])
    @pytest.mark.parametrize("bad", ["0.5", None, True, torch.tensor(0.5), [0.5]])
    def test_not_a_number(self, name, bad):
        kwargs = {"alpha": 0.3, "beta": 0.5, name: bad}
        with pytest.raises(TypeError, match=rf"`{name}` should be a real number"):
            relevance_dropout_mask(torch.rand(2, 4), **kwargs)

    def test_bounds_accepted(self):
        rel = torch.rand(2, 4)
        assert not bool(relevance_dropout_mask(rel, 1.0, 0.0).any())
        assert bool(relevance_dropout_mask(rel, 1.0, 1.0).all())
        assert relevance_dropout_mask(rel, 0, 1).dtype == torch.bool  # ints are numbers


class TestFillDropped:
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    def test_scalar_value(self, device, dtype):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 4, 5, 6, generator=g, dtype=dtype).to(device)
        mask = (torch.rand(3, 5, 6, generator=g) < 0.4).to(device)
        out = fill_dropped(x, mask, -2.5)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        expanded = mask[:, None].expand_as(x)
        assert bool((out[expanded] == -2.5).all())
        assert torch.equal(out[~expanded], x[~expanded])
        assert bool(mask.any()) and bool((~mask).any())

    @pytest.mark.parametrize("value", [(0.5, -1.0, 2.0), [0.5, -1.0, 2.0], torch.tensor([0.5, -1.0, 2.0])])
    def test_per_channel_value(self, device, value):
        x = torch.randn(2, 3, 4, 4, device=device)
        mask = torch.zeros(2, 4, 4, dtype=torch.bool, device=device)
        mask[0, 1, 2] = mask[1, 3, 0] = True
        out = fill_dropped(x, mask, value)
        for b, i, j in [(0, 1, 2), (1, 3, 0)]:
            assert out[b, :, i, j].tolist() == [0.5, -1.0, 2.0]
        keep = ~mask[:, None].expand_as(x)
        assert torch.equal(out[keep], x[keep])

    def test_single_entry_sequence_broadcasts(self):
        x = torch.randn(2, 3, 4, 4)
        mask = torch.ones(2, 4, 4, dtype=torch.bool)
        assert bool((fill_dropped(x, mask, [1.5]) == 1.5).all())

    def test_points_layout_channel_last(self, device):
        x = torch.randn(2, 7, 6, device=device)  # (B, N, C): xyz + normals
        mask = torch.zeros(2, 7, dtype=torch.bool, device=device)
        mask[0, 3] = mask[1, 0] = mask[1, 6] = True
        value = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
        out = fill_dropped(x, mask, value, channel_dim=-1)
        for b, n in [(0, 3), (1, 0), (1, 6)]:
            assert out[b, n].tolist() == list(value)
        keep = ~mask[..., None].expand_as(x)
        assert torch.equal(out[keep], x[keep])
        assert torch.equal(fill_dropped(x, mask, 0.0, channel_dim=2), fill_dropped(x, mask, 0.0, channel_dim=-1))

    def test_input_not_modified(self, device):
        x = torch.randn(2, 3, 4, 4, device=device)
        mask = torch.ones(2, 4, 4, dtype=torch.bool, device=device)
        before, version = x.clone(), x._version
        mask_before, mask_version = mask.clone(), mask._version
        out = fill_dropped(x, mask, 0.0)
        assert x._version == version and torch.equal(x, before)
        assert mask._version == mask_version and torch.equal(mask, mask_before)
        assert out.data_ptr() != x.data_ptr()

    def test_wrong_mask_shape(self):
        x = torch.randn(2, 3, 4, 4)
        with pytest.raises(ValueError, match=r"mask of shape \(2, 3, 4, 4\) does not match a batch of shape"):
            fill_dropped(x, torch.zeros(2, 3, 4, 4, dtype=torch.bool), 0.0)
        with pytest.raises(ValueError, match=r"expected \(2, 4, 4\)"):
            fill_dropped(x, torch.zeros(2, 4, 5, dtype=torch.bool), 0.0)
        with pytest.raises(ValueError, match="does not match"):
            fill_dropped(torch.randn(2, 7, 6), torch.zeros(2, 6, dtype=torch.bool), 0.0, channel_dim=-1)

    @pytest.mark.parametrize("mask", [torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.uint8),
                                      [[False]]])
    def test_wrong_mask_dtype(self, mask):
        with pytest.raises(TypeError, match="mask should be a bool tensor"):
            fill_dropped(torch.randn(2, 3, 4, 4), mask, 0.0)

    @pytest.mark.parametrize("value", [(1.0, 2.0), [1.0, 2.0, 3.0, 4.0], torch.zeros(3, 1)])
    def test_wrong_value_length(self, value):
        with pytest.raises(ValueError, match="one per channel"):
            fill_dropped(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), value)

    @pytest.mark.parametrize("value", ["a", None, [0.1, "b", 0.3], {"r": 1}, True])
    def test_value_that_is_not_numbers(self, value):
        # gave torch's "new(): invalid data type 'str'" / "must be real number, not NoneType"
        with pytest.raises(TypeError, match=r"value should be a number or a sequence of 3 numbers \(one per channel\), "
                                            r"but got"):
            fill_dropped(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), value)

    def test_value_as_numpy_or_zero_d_tensors(self):
        # a stricter check refused these, which filled correctly before (found by a peer review)
        import numpy as np

        x, mask = torch.randn(2, 3, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool)
        for value, channels in ((np.array([0.1, 0.2, 0.3]), [0.1, 0.2, 0.3]), (np.array(0.5), [0.5] * 3),
                                (np.float32(0.25), [0.25] * 3),
                                ([torch.tensor(0.1), torch.tensor(0.2), torch.tensor(0.3)], [0.1, 0.2, 0.3])):
            out = fill_dropped(x, mask, value)
            assert torch.equal(out, torch.tensor(channels).view(1, 3, 1, 1).expand_as(x))

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), (0.0, float("-inf"), 1.0)])
    def test_value_that_is_not_finite(self, value):
        # was written into the batch, which the transforms (and the next attribution) refuse as input
        with pytest.raises(ValueError, match="value should be a finite number"):
            fill_dropped(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), value)
        with pytest.raises(ValueError, match="fill should be a finite number"):
            fill_points(torch.randn(5, 2, 3), torch.zeros(5, dtype=torch.bool), float("nan"),
                        batch=torch.zeros(5, dtype=torch.long), num_segments=1)


class TestSampleCoins:
    def test_p_zero_and_one_exact(self, device):
        g = torch.Generator(device=device).manual_seed(0)
        state = g.get_state()
        ones = sample_coins(50, 1.0, device=device, generator=g)
        zeros = sample_coins(50, 0.0, device=device, generator=g)
        assert ones.dtype == torch.bool and ones.shape == (50,) and ones.device.type == torch.device(device).type
        assert bool(ones.all()) and not bool(zeros.any())
        assert torch.equal(g.get_state(), state)  # nothing drawn

    @pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
    def test_rate(self, device, p):
        n = 20000
        coins = sample_coins(n, p, device=device, generator=torch.Generator(device=device).manual_seed(1))
        assert coins.shape == (n,) and coins.dtype == torch.bool
        assert coins.device.type == torch.device(device).type
        rate = coins.double().mean().item()
        assert abs(rate - p) <= 5.0 * math.sqrt(p * (1 - p) / n)

    def test_reproducible(self):
        a = sample_coins(100, 0.5, generator=torch.Generator().manual_seed(2))
        b = sample_coins(100, 0.5, generator=torch.Generator().manual_seed(2))
        c = sample_coins(100, 0.5, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b) and not torch.equal(a, c)
        # The coins are U < p with the same noise as uniform_like draws.
        assert torch.equal(a, torch.rand(100, generator=torch.Generator().manual_seed(2)) < 0.5)

    def test_default_device_cpu_and_empty(self):
        assert sample_coins(3, 0.5).device == torch.device("cpu")
        assert sample_coins(0, 0.5).shape == (0,)

    @pytest.mark.parametrize("p", [-0.01, 1.01, float("nan")])
    def test_out_of_interval(self, p):
        with pytest.raises(ValueError, match=r"`p` should be in the interval \[0.0, 1.0\]"):
            sample_coins(4, p)

    def test_not_a_number(self):
        with pytest.raises(TypeError, match="`p` should be a real number"):
            sample_coins(4, "0.5")
