"""Bad input to the public kernels: a TypeError or ValueError that says what should hold and what was received
(were errors from inside Python or torch: "too many values to unpack", "'list' object has no attribute 'shape'",
"Trying to create tensor with negative dimension -1")."""

import pytest
import torch

from reldrop_transforms.functional import (
    ball_draws,
    box_mask,
    erasing_draws,
    fill_dropped,
    fill_points,
    keep_least_relevant,
    normalize_relevance,
    relevance_ball_mask,
    relevance_dropout_mask,
    relevant_centres,
    sample_coins,
    sample_erasing_sizes,
    uniform_like,
)

MASK = torch.zeros(2, 5, dtype=torch.bool)

CASES = {
    "relevant_centres 4-d": (lambda: relevant_centres(torch.rand(2, 3, 4, 4)), ValueError,
                             r"relevance should have shape \(B, H, W\), but got \(2, 3, 4, 4\)"),
    "relevant_centres list": (lambda: relevant_centres([[[1.0]]]), TypeError,
                              r"relevance should be a torch.Tensor of shape \(B, H, W\), but got list"),
    "relevant_centres num_patches": (lambda: relevant_centres(torch.rand(2, 4, 4), 1, 0), ValueError,
                                     r"num_patches should be an integer >= 1, but got 0"),
    "ball mask (B, N, 1)": (lambda: relevance_ball_mask(torch.rand(2, 5, 1), torch.rand(2, 5, 3)), ValueError,
                            r"relevance should have shape \(B, N\) \(or \(N,\) with batch\), but got \(2, 5, 1\)"),
    "ball mask pos rows": (lambda: relevance_ball_mask(torch.rand(2, 5), torch.rand(2, 4, 3)), ValueError,
                           r"pos should have shape \(B, N, D\) with \(B, N\) = \(2, 5\).*but got \(2, 4, 3\)"),
    "ball mask batch rows": (lambda: relevance_ball_mask(torch.rand(5), torch.rand(5, 3), batch=torch.zeros(4).long(),
                                                         num_segments=1), ValueError,
                             r"one row per point each, but got \(5,\), \(5, 3\) and \(4,\)"),
    "keep_least_relevant 1-d without batch": (lambda: keep_least_relevant(MASK[0], torch.rand(5)), ValueError,
                                              r"without batch, mask should have shape \(B, N\).*but got \(5,\)"),
    "keep_least_relevant shapes": (lambda: keep_least_relevant(MASK, torch.rand(2, 4)), ValueError,
                                   r"relevance should have the mask's shape \(2, 5\), but got \(2, 4\)"),
    "keep_least_relevant float mask": (lambda: keep_least_relevant(MASK.float(), torch.rand(2, 5)), TypeError,
                                       r"mask should be a bool tensor, but got torch.float32"),
    "normalize list": (lambda: normalize_relevance([1.0, 2.0]), TypeError,
                       r"relevance should be a torch.Tensor of shape \(B, \*\), but got list"),
    "normalize batch list": (lambda: normalize_relevance(torch.rand(3), batch=[0, 0, 1], num_segments=2), TypeError,
                             r"batch should be a torch.Tensor of shape \(N,\), but got list"),
    "dropout mask list": (lambda: relevance_dropout_mask([[1.0]], 0.5, 0.5), TypeError,
                          r"relevance should be a torch.Tensor"),
    "fill_dropped list": (lambda: fill_dropped([[1.0]], torch.zeros(1, dtype=torch.bool)), TypeError,
                          r"inpt should be a torch.Tensor of shape \(B, C, \*\), but got list"),
    "fill_dropped channel_dim": (lambda: fill_dropped(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool),
                                                      channel_dim=3), ValueError,
                                 r"channel_dim should be a dimension of inpt \(in \[-3, 3\)\), but got 3"),
    "sample_coins negative": (lambda: sample_coins(-1, 0.5), ValueError,
                              r"batch_size should be an integer >= 0, but got -1"),
    "sample_coins float": (lambda: sample_coins(2.0, 0.5), TypeError,
                           r"batch_size should be an integer >= 0, but got float 2.0"),
    "box_mask shapes": (lambda: box_mask(4, 4, torch.zeros(2, 2, 2).long(), torch.zeros(2, 3, 2).long()), ValueError,
                        r"centres and sizes should both have shape \(B, P, 2\), but got \(2, 2, 2\) and \(2, 3, 2\)"),
    "box_mask height": (lambda: box_mask(-1, 4, torch.zeros(2, 1, 2).long(), torch.zeros(2, 1, 2).long()),
                        ValueError, r"height should be an integer >= 0, but got -1"),
    # (were AttributeError / RuntimeError from inside, or accepted)
    "uniform_like generator int": (lambda: uniform_like(torch.empty(2), 5), TypeError,
                                   r"generator should be a torch.Generator or None, but got int"),
    "sample_coins generator str": (lambda: sample_coins(3, 0.5, generator="cuda"), TypeError,
                                   r"generator should be a torch.Generator or None, but got str"),
    "dropout mask noise list": (lambda: relevance_dropout_mask(torch.rand(1, 2), 0.5, 0.5, noise=[[0.1, 0.2]]),
                                TypeError, r"noise should be a torch.Tensor of shape like relevance, but got list"),
    "normalize batch beyond num_segments": (
        lambda: normalize_relevance(torch.rand(3), batch=torch.tensor([0, 1, 2]), num_segments=2), ValueError,
        r"batch should hold cloud indices in \[0, 2\) \(num_segments=2\), but holds 0..2"),
    "fill_points num_segments negative": (
        lambda: fill_points(torch.rand(3, 2), torch.zeros(3, dtype=torch.bool), "first", batch=torch.zeros(3).long(),
                            num_segments=-1), ValueError, r"num_segments should be an integer >= 0, but got -1"),
    "ball mask float batch": (lambda: relevance_ball_mask(torch.rand(3), torch.rand(3, 3), batch=torch.zeros(3),
                                                          num_segments=1), TypeError,
                              (r"batch should be a 1-d integer tensor \(a cloud index per point\), but got a 1-d "
                               r"torch.float32")),
    "erasing_draws negative": (lambda: erasing_draws(-1), ValueError, r"batch_size should be an integer >= 0, but got -1"),
    "erasing_draws no patches": (lambda: erasing_draws(2, 0), ValueError,
                                 r"num_patches should be an integer >= 1, but got 0"),
    "erasing sizes negative height": (lambda: sample_erasing_sizes(2, -3, 4), ValueError,
                                      r"height should be an integer >= 0, but got -3"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_clear_errors(name):
    call, error, match = CASES[name]
    with pytest.raises(error, match=match):
        call()


def test_integer_like_sizes_and_dims():
    import numpy as np

    assert sample_coins(torch.tensor(4), 0.5).shape == (4,)
    assert sample_coins(np.int64(3), 1.0).shape == (3,)
    assert relevant_centres(torch.rand(2, 4, 4), torch.tensor(2), np.int32(3)).shape == (2, 3, 2)
    sizes = torch.full((1, 1, 2), 2)  # (broadcast over the patches)
    assert box_mask(torch.tensor(4), np.int64(4), torch.ones(1, 3, 2).long(), sizes).shape == (1, 4, 4)
    x = torch.ones(2, 3, 4)
    out = fill_dropped(x, torch.ones(2, 4, dtype=torch.bool), channel_dim=np.int64(1))
    assert torch.equal(out, fill_dropped(x, torch.ones(2, 4, dtype=torch.bool), channel_dim=torch.tensor(1)))
    with pytest.raises(ValueError, match="channel_dim should be a dimension"):
        fill_dropped(x, torch.ones(2, 4, dtype=torch.bool), channel_dim=True)


def test_integer_batch_vectors_and_relevance():
    # an int32 batch vector (accepted by the other kernels) raised in the ball mask's scatter; integer relevance on
    # PyG clouds raised in keep_least_relevant (accepted on dense clouds). The same results as int64 / float
    rel, pos = torch.tensor([3, 1, 2, 5, 4]), torch.rand(5, 3)
    batch = torch.tensor([0, 0, 0, 1, 1])
    draws = ball_draws(2, generator=torch.Generator().manual_seed(0))
    expected = relevance_ball_mask(rel.float(), pos, batch=batch, num_segments=2, draws=draws)
    assert torch.equal(relevance_ball_mask(rel.float(), pos, batch=batch.int(), num_segments=2, draws=draws), expected)
    mask = torch.ones(5, dtype=torch.bool)
    kept = keep_least_relevant(mask, rel, batch=batch.int(), num_segments=2)
    assert torch.equal(kept, keep_least_relevant(mask, rel.float(), batch=batch, num_segments=2))
    assert torch.equal(~kept, torch.tensor([False, True, False, False, True]))


def test_valid_calls_still_work():
    assert sample_coins(0, 0.5).shape == (0,)
    assert keep_least_relevant(MASK | True, torch.rand(2, 5)).sum() == 8
    assert fill_dropped(torch.ones(2, 3, 4), torch.ones(2, 4, dtype=torch.bool), channel_dim=-2).abs().sum() == 0
    assert box_mask(4, 4, torch.ones(1, 1, 2).long(), torch.full((1, 1, 2), 2)).sum() == 4
