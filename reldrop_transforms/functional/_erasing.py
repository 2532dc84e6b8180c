"""Relevance-guided erasing kernels (the published Block/Patch variants, and balls for point clouds).

Random Erasing (area fraction ``U(scale)``, log-uniform aspect ratio in ``ratio``) whose rectangle is centred on
one of the sample's ``top_k`` most relevant pixels, clipped at the border. Vectorised over the batch, the patches
and the tries: no Python loop over samples and no host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import (
    check_bool_mask,
    check_count,
    check_positive_int,
    check_range,
    check_segments,
    check_tensor,
)
from ._mask import noise_dtype, normalize_relevance, uniform_like

__all__ = ["sample_erasing_sizes", "relevant_centres", "box_mask", "relevance_erasing_mask", "relevance_ball_mask",
           "erasing_draws", "ball_draws"]

_TRIES = 10  # as torchvision's RandomErasing



def sample_erasing_sizes(
    batch_size: int,
    height: int,
    width: int,
    *,
    scale: Sequence[float] = (0.02, 0.4),
    ratio: Sequence[float] = (0.3, 3.3),
    num_patches: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    draws: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Rectangle sizes as ``v2.RandomErasing`` draws them, for every sample and patch at once.

    The erased area is ``U(scale) * H * W / num_patches`` and the aspect ratio log-uniform in ``ratio``; of up to
    10 tries the first that fits (``0 < h < H`` and ``0 < w < W``) is taken, and a sample-patch with none is not
    erased.

    Args:
        draws: The uniform numbers ``(B, P, 10, 2)`` themselves (then ``generator`` is unused), e.g. drawn outside a
            captured CUDA graph.

    Returns:
        ``sizes`` (B, P, 2) integer ``(h, w)`` and ``valid`` (B, P) bool.
    """
    low, high = check_range("scale", scale, 0.0, 1.0)
    r_low, r_high = check_range("ratio", ratio, 1e-12)
    check_positive_int("num_patches", num_patches)
    batch_size, height, width = (check_count(name, value) for name, value in
                                 (("batch_size", batch_size), ("height", height), ("width", width)))
    device = torch.device("cpu") if device is None else torch.device(device)
    if draws is None:
        draws = uniform_like(torch.empty(batch_size, num_patches, _TRIES, 2, device=device), generator)
    _check_draws("size draws", draws, (batch_size, num_patches, _TRIES, 2))
    area = (low + (high - low) * draws[..., 0]) * (height * width / num_patches)
    log_ratio = math.log(r_low) + (math.log(r_high) - math.log(r_low)) * draws[..., 1]
    aspect = torch.exp(log_ratio)
    h = torch.round(torch.sqrt(area * aspect)).long()
    w = torch.round(torch.sqrt(area / aspect)).long()
    fits = (h < height) & (w < width) & (h > 0) & (w > 0)
    first = fits.int().argmax(-1, keepdim=True)  # the first try that fits (0 if none does)
    sizes = torch.stack([h.gather(-1, first).squeeze(-1), w.gather(-1, first).squeeze(-1)], -1)
    return sizes, fits.any(-1)


def relevant_centres(
    relevance: Tensor, top_k: int = 1, num_patches: int = 1, *, generator: torch.Generator | None = None,
    draws: Tensor | None = None,
) -> Tensor:
    """Centres drawn uniformly from each sample's ``top_k`` most relevant pixels (one per patch); of equally
    relevant pixels the first in row-major order ranks first (as :func:`relevance_ball_mask` ranks points).

    A sample whose relevance is flat (all equal, or all zero) has no ranking: its centres are uniformly random
    pixels. ``draws``: the uniform numbers ``(B, num_patches, 2)`` themselves (then ``generator`` is unused).

    Shape:
        - relevance: (B, H, W).
        - output: (B, num_patches, 2) integer ``(row, column)``.
    """
    check_tensor("relevance", relevance, "(B, H, W)", ndim=3)
    check_positive_int("top_k", top_k)
    check_positive_int("num_patches", num_patches)
    batch_size, height, width = relevance.shape
    flat = relevance.reshape(batch_size, height * width)  # not -1: an empty batch is allowed
    if flat.dtype == torch.bool:  # (argmax and topk take no bool: ranked as 0 / 1, as normalize_relevance does)
        flat = flat.to(torch.float32)
    if draws is None:
        draws = uniform_like(torch.empty(batch_size, num_patches, 2, device=relevance.device), generator)
    _check_draws("centre draws", draws, (batch_size, num_patches, 2))
    if flat.shape[1] == 0:  # an image without pixels ((B, 0, W), (B, H, 0)): no pixel to centre on, nor to erase
        return torch.zeros((batch_size, num_patches, 2), dtype=torch.long, device=relevance.device)
    k = min(top_k, flat.shape[1])
    best = _top_indices(flat, k)  # (B, k)
    pick = best.gather(1, (draws[..., 0] * k).long().clamp_(max=k - 1))
    anywhere = (draws[..., 1] * flat.shape[1]).long().clamp_(max=flat.shape[1] - 1)
    is_flat = (normalize_relevance(flat).amax(1, keepdim=True) == 0)
    index = torch.where(is_flat, anywhere, pick)
    return torch.stack([index // width, index % width], -1)


def _top_indices(flat: Tensor, k: int) -> Tensor:
    """The indices of each row's ``k`` largest values, largest first, equal values by lowest index first (as
    :func:`relevance_ball_mask` ranks points; ``topk`` leaves the order of ties unspecified, and it differs between
    devices), without sorting the rows: the ``k``-th largest value, every index above it and the first indices
    equal to it."""
    if k == 1:  # (argmax returns the first maximum; a NaN ranks above every number, as in topk)
        return flat.argmax(1, keepdim=True)
    if flat.is_floating_point():  # NaN as the largest value, as argmax and topk rank it (NaN equals nothing: the
        flat = torch.where(flat.isnan(), torch.inf, flat)  # comparisons below would choose fewer than k)
    kth = flat.topk(k, dim=1).values[:, -1:]
    above = flat > kth
    ties = flat == kth
    chosen = above | (ties & (ties.cumsum(1) <= k - above.sum(1, keepdim=True)))  # exactly k per row
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(flat)
    index = torch.where(chosen, positions, flat.shape[1]).topk(k, dim=1, largest=False).values  # ascending
    order = torch.sort(flat.gather(1, index), dim=1, descending=True, stable=True).indices
    return index.gather(1, order)


def _check_draws(name: str, draws: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(draws, Tensor) or tuple(draws.shape) != shape:
        got = tuple(draws.shape) if isinstance(draws, Tensor) else type(draws).__name__
        raise ValueError(f"{name} should have shape {shape}, but got {got} instead.")


def _broadcast(*shapes: torch.Size) -> torch.Size | None:
    """The shape ``shapes`` broadcast to, or ``None`` when they do not broadcast."""
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        return None


def box_mask(height: int, width: int, centres: Tensor, sizes: Tensor, valid: Tensor | None = None) -> Tensor:
    """Union of the rectangles of ``sizes`` centred at ``centres``, clipped at the border.

    A rectangle of height ``h`` centred at row ``c`` covers rows ``[c - h // 2, c - h // 2 + h)``.

    Shape:
        - centres, sizes: (B, P, 2) integer ``(row, column)`` and ``(h, w)``; valid: (B, P) bool.
        - output: (B, H, W) bool.
    """
    height, width = check_count("height", height), check_count("width", width)
    check_tensor("centres", centres, "(B, P, 2)", ndim=3)
    check_tensor("sizes", sizes, "(B, P, 2)", ndim=3)
    broadcast = _broadcast(centres.shape, sizes.shape)
    if broadcast is None or broadcast[-1] != 2 or centres.shape[-1] != 2 or sizes.shape[-1] != 2:
        raise ValueError(f"centres and sizes should both have shape (B, P, 2), but got {tuple(centres.shape)} and "
                         f"{tuple(sizes.shape)}.")
    if valid is not None and _broadcast(check_bool_mask("valid", valid).shape, broadcast[:2]) != broadcast[:2]:
        raise ValueError(f"valid should have shape (B, P) = {tuple(broadcast[:2])}, but got {tuple(valid.shape)}.")
    top = centres[..., 0] - sizes[..., 0] // 2
    left = centres[..., 1] - sizes[..., 1] // 2
    rows = torch.arange(height, device=centres.device)
    cols = torch.arange(width, device=centres.device)
    in_rows = (rows >= top[..., None]) & (rows < (top + sizes[..., 0])[..., None])  # (B, P, H)
    in_cols = (cols >= left[..., None]) & (cols < (left + sizes[..., 1])[..., None])  # (B, P, W)
    if valid is not None:
        in_rows = in_rows & valid[..., None]
    return (in_rows[..., :, None] & in_cols[..., None, :]).any(1)


def relevance_erasing_mask(
    relevance: Tensor,
    *,
    scale: Sequence[float] = (0.02, 0.4),
    ratio: Sequence[float] = (0.3, 3.3),
    top_k: int = 1,
    num_patches: int = 1,
    generator: torch.Generator | None = None,
    draws: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Mask of relevance-guided Random Erasing: Block (``num_patches=1``) or Patch (``num_patches > 1``).

    Each of ``num_patches`` rectangles has area fraction ``U(scale) / num_patches`` and a log-uniform aspect
    ratio in ``ratio`` (as ``v2.RandomErasing``), and is centred on one of the sample's ``top_k`` most relevant
    pixels, clipped at the border. With ``top_k=1`` the most relevant pixel is always erased (when a rectangle
    fits at all). ``draws``: the uniform numbers of :func:`erasing_draws` (then ``generator`` is unused).

    Shape:
        - relevance: (B, H, W) (channels already summed).
        - output: (B, H, W), bool.

    Example:
        >>> relevance_erasing_mask(torch.rand(4, 32, 32), scale=(0.1, 0.2)).shape
        torch.Size([4, 32, 32])
    """
    check_tensor("relevance", relevance, "(B, H, W)", ndim=3)
    batch_size, height, width = relevance.shape
    if draws is not None and not (isinstance(draws, (tuple, list)) and len(draws) == 2):
        raise ValueError(f"draws should be the pair (size draws, centre draws) of erasing_draws, but got "
                         f"{type(draws).__name__}.")
    size_draws, centre_draws = (None, None) if draws is None else draws
    sizes, valid = sample_erasing_sizes(batch_size, height, width, scale=scale, ratio=ratio,
                                        num_patches=num_patches, generator=generator, device=relevance.device,
                                        draws=size_draws)
    centres = relevant_centres(relevance, top_k, num_patches, generator=generator, draws=centre_draws)
    return box_mask(height, width, centres, sizes, valid)


def erasing_draws(batch_size: int, num_patches: int = 1, *, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The uniform numbers :func:`relevance_erasing_mask` draws, in its order: sizes ``(B, P, 10, 2)`` (area and
    aspect of each try), then centres ``(B, P, 2)``."""
    batch_size = check_count("batch_size", batch_size)
    num_patches = check_positive_int("num_patches", num_patches)
    device = torch.device("cpu") if device is None else torch.device(device)
    sizes = uniform_like(torch.empty(batch_size, num_patches, _TRIES, 2, device=device), generator)
    return sizes, uniform_like(torch.empty(batch_size, num_patches, 2, device=device), generator)


def ball_draws(num_clouds: int, *, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
    """The uniform numbers :func:`relevance_ball_mask` draws: ``(num_clouds, 3)`` (centre rank, radius, spare), in
    ``dtype`` or float32, whichever is wider (bfloat16's 8 bits of mantissa left half of 1000 top-k ranks
    unreachable)."""
    check_count("num_clouds", num_clouds)
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = noise_dtype(dtype)
    return uniform_like(torch.empty(num_clouds, 3, device=device, dtype=dtype), generator)


def relevance_ball_mask(
    relevance: Tensor,
    pos: Tensor,
    *,
    radius: Sequence[float] = (0.1, 0.3),
    top_k: int = 1,
    generator: torch.Generator | None = None,
    batch: Tensor | None = None,
    num_segments: int | None = None,
    draws: Tensor | None = None,
) -> Tensor:
    """Mask of the points within a ball around one of each cloud's ``top_k`` most relevant points.

    The radius is ``U(radius)`` times the cloud's bounding-box diagonal. A cloud with flat relevance gets a
    uniformly random centre. Dense clouds ``(B, N)`` or PyG-style flat clouds with ``batch``; no loop over clouds.
    ``draws``: the uniform numbers of :func:`ball_draws` (then ``generator`` is unused).

    Shape:
        - relevance: (B, N) dense, or (N,) with ``batch`` (N,) and ``num_segments`` clouds.
        - pos: (B, N, D) dense, or (N, D) with ``batch``.
        - output: like ``relevance``, bool.
    """
    low, high = check_range("radius", radius, 0.0)
    check_positive_int("top_k", top_k)
    if isinstance(pos, Tensor) and not pos.is_floating_point():
        raise TypeError(f"pos should be a floating-point tensor (the radius scales its bounding-box diagonal), but got "
                        f"dtype {pos.dtype}: convert it first with pos.float().")
    if batch is None:
        check_tensor("relevance", relevance, "(B, N) (or (N,) with batch)", ndim=2)
        check_tensor("pos", pos, "(B, N, D)", ndim=3)
        if pos.shape[:2] != relevance.shape:
            raise ValueError(f"pos should have shape (B, N, D) with (B, N) = {tuple(relevance.shape)} (the relevance's "
                             f"shape), but got {tuple(pos.shape)}.")
        num, size = relevance.shape
        flat_rel, flat_pos = relevance.reshape(-1), pos.reshape(num * size, pos.shape[-1])
        segment = torch.arange(num, device=relevance.device).repeat_interleave(size)
        count = num
    else:
        batch, num_segments = check_segments(batch, num_segments)
        check_tensor("relevance", relevance, "(N,) with batch", ndim=1)
        check_tensor("pos", pos, "(N, D) with batch", ndim=2)
        if not (batch.shape[0] == pos.shape[0] == relevance.shape[0]):
            raise ValueError(f"relevance (N,), pos (N, D) and batch (N,) should have one row per point each, but got "
                             f"{tuple(relevance.shape)}, {tuple(pos.shape)} and {tuple(batch.shape)}.")
        flat_rel, flat_pos, segment, count = relevance, pos, batch, num_segments
    n = flat_rel.shape[0]
    if n == 0:  # no points at all (a shape, not a synchronisation)
        return torch.zeros(relevance.shape, dtype=torch.bool, device=relevance.device)
    if draws is None:
        draws = ball_draws(count, dtype=pos.dtype, generator=generator, device=relevance.device)
    _check_draws("ball draws", draws, (count, 3))
    # rank points within their cloud by relevance (descending), without a loop over clouds
    by_relevance = torch.argsort(flat_rel, descending=True, stable=True)
    order = by_relevance[torch.argsort(segment[by_relevance], stable=True)]
    sizes = torch.zeros(count, dtype=torch.long, device=relevance.device).scatter_add_(
        0, segment, torch.ones_like(segment))
    starts = sizes.cumsum(0) - sizes
    normalized = normalize_relevance(flat_rel, batch=segment, num_segments=count)
    is_flat = normalized.new_zeros(count).scatter_reduce(0, segment, normalized, "amax") == 0
    choices = torch.where(is_flat, sizes, sizes.clamp(max=top_k))
    rank = (draws[:, 0] * choices).long().clamp(min=0)
    rank = torch.minimum(rank, (choices - 1).clamp(min=0))
    centre = order[(starts + rank).clamp(max=max(n - 1, 0))]
    lo = flat_pos.new_full((count, flat_pos.shape[1]), float("inf")).scatter_reduce(
        0, segment[:, None].expand_as(flat_pos), flat_pos, "amin")
    hi = flat_pos.new_full((count, flat_pos.shape[1]), float("-inf")).scatter_reduce(
        0, segment[:, None].expand_as(flat_pos), flat_pos, "amax")
    diagonal = (hi - lo).norm(dim=1)
    r = (low + (high - low) * draws[:, 1]) * diagonal
    distance = (flat_pos - flat_pos[centre][segment]).norm(dim=1)
    return (distance <= r[segment]).reshape(relevance.shape)
