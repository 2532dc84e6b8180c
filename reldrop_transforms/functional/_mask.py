"""Pure tensor kernels of the RelDrop mask rule (METHOD.md section 1). No model in here."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import (
    as_integer,
    check_bool_mask,
    check_count,
    check_finite_number,
    check_generator,
    check_segments,
    check_tensor,
    check_unit_interval,
)

__all__ = ["normalize_relevance", "relevance_dropout_mask", "fill_dropped", "sample_coins", "uniform_like", "noise_dtype"]


def _as_float(relevance: Tensor) -> Tensor:
    if not isinstance(relevance, Tensor):
        raise TypeError(f"relevance should be a torch.Tensor, but got {type(relevance).__name__}.")
    if relevance.ndim < 1:
        raise ValueError(f"relevance should have a batch dimension, shape (B, *), but got shape {tuple(relevance.shape)}.")
    if relevance.is_complex():
        raise TypeError(f"relevance should be real, but got dtype {relevance.dtype}.")
    return relevance if relevance.is_floating_point() else relevance.float()


def _segment_extrema(values: Tensor, batch: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    low = values.new_full((num_segments,), float("inf")).scatter_reduce(0, batch, values, "amin")
    high = values.new_full((num_segments,), float("-inf")).scatter_reduce(0, batch, values, "amax")
    return low, high


def normalize_relevance(
    relevance: Tensor, *, batch: Tensor | None = None, num_segments: int | None = None
) -> Tensor:
    """Per-sample min-max normalisation of relevance to [0, 1].

    Each row ``r`` becomes ``(r - r.min()) / (r.max() - r.min())``. A row whose range is zero or negligible
    against its magnitude (within the dtype's machine epsilon) is flat: it carries no ranking and maps to all
    zeros, never to NaN. With ``batch``, the samples are segments of a flat tensor (PyG point clouds): element
    ``i`` belongs to sample ``batch[i]``, and the statistics are computed per segment without a loop.

    The relevance should be finite (checking would cost a host-device synchronisation; the transforms check the
    attribution they compute): a row holding an infinity has an infinite range and maps to all zeros, as a flat one,
    and a row holding a NaN maps to NaN, which no threshold drops.

    Args:
        relevance: Relevance per element, one row per sample (channels already summed), or one value per
            element of a PyG batch when ``batch`` is given.
        batch: Sample index of each element (PyG's ``batch`` vector), sorted or not.
        num_segments: Number of samples (``Batch.num_graphs``); required with ``batch`` (no synchronisation).

    Shape:
        - relevance: (B, *), any real dtype (integers are promoted to float32); (N,) with ``batch``.
        - batch: (N,), integer.
        - output: same as ``relevance``, floating, values in [0, 1].

    Example:
        >>> normalize_relevance(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
        tensor([[0., 1.],
                [0., 0.]])
        >>> normalize_relevance(torch.tensor([1.0, 3.0, 2.0]), batch=torch.tensor([0, 0, 1]), num_segments=2)
        tensor([0., 1., 0.])
    """
    check_tensor("relevance", relevance, "(B, *)")
    if batch is not None:
        check_tensor("batch", batch, "(N,)")
    relevance = _as_float(relevance)
    if relevance.numel() == 0:
        return relevance.clone()
    if batch is None:
        flat = relevance.reshape(relevance.shape[0], -1)
        low = flat.amin(dim=1, keepdim=True)
        high = flat.amax(dim=1, keepdim=True)
    else:
        batch, num_segments = check_segments(batch, num_segments)
        if relevance.ndim != 1 or batch.shape != relevance.shape:
            raise ValueError(
                f"with batch, relevance should have shape (N,) like batch, but got relevance "
                f"{tuple(relevance.shape)} and batch {tuple(batch.shape)}."
            )
        flat = relevance
        low, high = (t[batch] for t in _segment_extrema(relevance, batch, num_segments))
    # Where max - min overflows the dtype (both ends near its range: float16 relevance of +-4e4), the row is
    # halved first (a power of two: exact but for subnormal values); elsewhere the factor is 1 and changes nothing.
    half = torch.where(torch.isfinite(high - low), 1.0, 0.5).to(flat.dtype)
    low, high = low * half, high * half
    span = high - low
    # A span at or below one ulp of the row's magnitude is rounding noise, not a ranking.
    negligible = torch.finfo(flat.dtype).eps * torch.maximum(high.abs(), low.abs())
    is_flat = span <= negligible
    scaled = (flat * half - low) / torch.where(is_flat, torch.ones_like(span), span)
    out = torch.where(is_flat, torch.zeros_like(scaled), scaled).clamp_(0.0, 1.0)
    return out.reshape(relevance.shape)


def noise_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype random numbers for masks of ``dtype`` values are drawn and compared in: float32 at least (bfloat16's
    8 bits of mantissa would make ``U`` and ``1 - beta`` coarse steps)."""
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else torch.float32


def uniform_like(reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``U[0, 1)`` noise of ``reference``'s shape, dtype and device, drawn from ``generator``.

    Drawn on the generator's device (or ``reference``'s without one) and moved to ``reference``'s device, so a
    CPU generator drives a CUDA batch reproducibly (at the price of a copy: give a generator on the batch's
    device for speed).
    """
    check_tensor("reference", reference)
    if not reference.is_floating_point():
        raise TypeError(f"uniform_like draws floating-point noise: reference should be a floating-point tensor, but got "
                        f"dtype {reference.dtype}.")
    generator = check_generator(generator)
    device = reference.device if generator is None else generator.device
    noise = torch.rand(reference.shape, generator=generator, device=device, dtype=reference.dtype)
    # (to the host, a copy must be waited for: a non-blocking one returns before the values have arrived)
    return noise.to(reference.device, non_blocking=reference.device.type != "cpu")


def relevance_dropout_mask(
    relevance: Tensor,
    alpha: float,
    beta: float,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    batch: Tensor | None = None,
    num_segments: int | None = None,
) -> Tensor:
    """Mask of the elements RelDrop occludes.

    With ``Rn = normalize_relevance(relevance)`` and ``U ~ Uniform[0, 1)`` drawn independently per element, an
    element is dropped where ``alpha * U + (1 - alpha) * Rn >= 1 - beta``. Hence
    ``P(drop | Rn = r) = clip((beta - (1 - alpha) * (1 - r)) / alpha, 0, 1)`` for ``alpha > 0``; ``alpha = 1`` is
    plain random dropout at rate ``beta``; ``alpha = 0`` is the deterministic threshold ``Rn >= 1 - beta`` (no
    noise is drawn; with ``beta = 0`` it drops the elements of ``Rn = 1``, the most relevant). With ``alpha > 0``,
    ``beta = 0`` drops nothing (the noise is still drawn, so that the generator advances as for any ``beta``). Vectorised over the batch, with no host-device synchronisation. Computed in float32 at least
    (bfloat16 and float16 relevance is promoted: in those, ``1 - beta`` and the score round off the probability).

    Args:
        relevance: Relevance per element, one row per sample (channels already summed).
        alpha: Weight of the random term, in [0, 1].
        beta: Drop threshold offset, in [0, 1].
        generator: Source of the noise; see :func:`uniform_like`.
        noise: The noise ``U`` itself, drawn by the caller (then ``generator`` is unused); e.g. drawn outside a
            captured CUDA graph.
        batch: Sample index per element for PyG batches; see :func:`normalize_relevance`.
        num_segments: Number of samples with ``batch``.

    Shape:
        - relevance: (B, *), any real dtype.
        - noise: same as ``relevance``, values in [0, 1).
        - output: (B, *), bool.

    Example:
        >>> relevance_dropout_mask(torch.rand(2, 8, 8), alpha=0.5, beta=0.5).shape
        torch.Size([2, 8, 8])
    """
    alpha = check_unit_interval("alpha", alpha)
    beta = check_unit_interval("beta", beta)
    # in float32 at least: in bfloat16 / float16, 1 - beta rounds (to 1 for beta = 1e-3: no drop at alpha = 1) and
    # so do the score and the noise, off the documented probability
    if isinstance(relevance, Tensor) and relevance.is_floating_point():
        relevance = relevance.to(noise_dtype(relevance.dtype))
    rn = normalize_relevance(relevance, batch=batch, num_segments=num_segments)
    if noise is not None and check_tensor("noise", noise, "like relevance").shape != rn.shape:
        raise ValueError(f"noise of shape {tuple(noise.shape)} does not match relevance of shape {tuple(rn.shape)}.")
    if noise is not None and not noise.is_floating_point():
        raise TypeError(f"noise should hold U[0, 1) values in a floating-point tensor (e.g. from uniform_like), but got "
                        f"dtype {noise.dtype}.")
    score = (1.0 - alpha) * rn
    if alpha > 0.0:
        score = score + alpha * (uniform_like(rn, generator) if noise is None else noise.to(rn.dtype))
        if beta == 0.0:  # P(drop) = 0 for every element, where the rounded score of Rn = 1 may reach 1 (tiny alpha)
            return torch.zeros_like(score, dtype=torch.bool)
    return score >= 1.0 - beta


def sample_coins(batch_size: int, p: float, *, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """Per-sample coins: ``True`` with probability ``p`` (bool tensor of shape ``(batch_size,)``).

    ``p = 1`` and ``p = 0`` draw nothing, so they leave the generator untouched.
    """
    p = check_unit_interval("p", p)
    batch_size = check_count("batch_size", batch_size)
    device = torch.device("cpu") if device is None else torch.device(device)
    if p >= 1.0 or p <= 0.0:
        return torch.full((batch_size,), p >= 1.0, dtype=torch.bool, device=device)
    reference = torch.empty(batch_size, device=device)
    return uniform_like(reference, generator) < p


def fill_dropped(inpt: Tensor, mask: Tensor, value: float | Sequence[float] | Tensor = 0.0, *, channel_dim: int = 1) -> Tensor:
    """Return a copy of ``inpt`` with the masked elements replaced by ``value``; ``inpt`` is not modified.

    ``value`` lives in the space of ``inpt`` as given: after ``Normalize``, ``0.0`` is the dataset mean.

    Args:
        inpt: Batch whose masked elements are filled.
        mask: Bool mask over every dimension of ``inpt`` except ``channel_dim``.
        value: A number, or one number per channel.
        channel_dim: The channel dimension of ``inpt`` that ``mask`` lacks and ``value`` runs along.

    Shape:
        - inpt: (B, C, *) with ``channel_dim=1`` (the default; (B, N, C) for points with ``channel_dim=-1``).
        - mask: ``inpt``'s shape without ``channel_dim``, bool.
        - output: same as ``inpt``.

    Example:
        >>> x = torch.ones(1, 3, 2, 2)
        >>> fill_dropped(x, torch.tensor([[[True, False], [False, False]]]), (0.5, 0.0, -1.0))[0, :, 0, 0]
        tensor([ 0.5000,  0.0000, -1.0000])
    """
    if check_tensor("inpt", inpt, "(B, C, *)").ndim == 0:
        raise ValueError("inpt should have shape (B, C, *), but got a 0-d tensor.")
    check_bool_mask("mask", mask)
    dim = as_integer(channel_dim)
    if dim is None or not -inpt.ndim <= dim < inpt.ndim:
        raise ValueError(f"channel_dim should be a dimension of inpt (in [{-inpt.ndim}, {inpt.ndim})), but got "
                         f"{channel_dim!r}.")
    channel_dim = dim % inpt.ndim
    expected = inpt.shape[:channel_dim] + inpt.shape[channel_dim + 1:]
    if mask.shape != expected:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match a batch of shape {tuple(inpt.shape)}: "
            f"expected {tuple(expected)} (the batch without dimension {channel_dim})."
        )
    channels = inpt.shape[channel_dim]
    if not isinstance(value, Tensor):  # numbers, sequences of them, numpy arrays (a tensor: as it is, no sync)
        try:
            host = torch.as_tensor(value) if not isinstance(value, str) else None
        except (TypeError, ValueError, RuntimeError):
            host = None
        if host is None or host.dtype == torch.bool or host.is_complex():
            raise TypeError(f"value should be a number or a sequence of {channels} numbers (one per channel), but got "
                            f"{value!r:.80}.")
        for v in host.reshape(-1).tolist():
            check_finite_number("value", float(v))
    # (from `value` itself, not `host`: Python floats go straight to the batch's dtype, not through float32)
    fill = torch.as_tensor(value, dtype=inpt.dtype, device=inpt.device)
    if fill.ndim > 1 or (fill.ndim == 1 and fill.numel() not in (1, channels)):
        raise ValueError(
            f"value should be a number or a sequence of {channels} numbers (one per channel), "
            f"but got {tuple(fill.shape) if fill.ndim else fill} instead."
        )
    view = [1] * inpt.ndim
    view[channel_dim] = -1
    fill = fill.reshape(view)
    return torch.where(mask.unsqueeze(channel_dim), fill, inpt)
