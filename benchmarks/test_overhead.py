"""pytest-benchmark suite: every variant of every CPU case, grouped by case (``make bench``).

Timings are recorded, never asserted: each test only checks that the measured function did its work (a finite loss,
a gradient of the input's shape, a masked batch of the input's shape with some pixels (points) filled and the input
left untouched). Point-cloud cases (PointNet++ / PointNet / DGCNN, dense and PyG) are in ``test_point_overhead``,
the erasing mask stage (issue #5 item 5: vectorised against the published per-sample / per-cloud loops) in
``test_erasing_overhead``. Ratios between variants are only meaningful within one run; ``benchmarks/overhead.py``
measures them interleaved, which is the better comparison on a busy machine.
"""

from __future__ import annotations

import pytest
import torch

from cases import CPU_CASES, CPU_ERASING_CASES, CPU_POINT_CASES, MASK_VARIANTS, POINT_VARIANTS, SLOW_VARIANTS, VARIANTS, Bench

ROUNDS = 5
SLOW_ROUNDS = 2


def check_output(bench: Bench, variant: str, out: torch.Tensor) -> None:
    """Assert that ``variant`` produced what it should on ``bench``'s batch."""
    images = bench.images
    if variant in ("plain", "plain_masked", "floor_then_step"):
        assert out.ndim == 0 and torch.isfinite(out)
        return
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.isfinite(out).all()
    if variant in ("floor", "attribution"):  # an input gradient / a relevance of the batch's shape, not all zero
        assert out.abs().sum() > 0
        return
    # A masked batch: some pixels set to the fill value 0.0 in every channel, most pixels kept.
    dropped = (out == 0).all(1) & (images != 0).any(1)
    kept = (out == images).all(1)
    assert dropped.any(), f"{variant} dropped no pixel"
    assert kept.any(), f"{variant} dropped every pixel"
    assert (dropped | kept).all(), f"{variant} changed pixels other than by filling them"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda case: case.name)
def test_overhead(benchmark, bench_for, case, variant):
    bench = bench_for(case)
    version = bench.images._version
    function = bench.variants()[variant]
    function()  # warm-up: the fast engine audits a model on its first call
    benchmark.group = case.name
    benchmark.extra_info.update(case=case.name, variant=variant, p=1.0, precision=bench.precision)
    rounds = SLOW_ROUNDS if variant in SLOW_VARIANTS else ROUNDS
    out = benchmark.pedantic(function, rounds=rounds, iterations=1, warmup_rounds=0)
    check_output(bench, variant, out)
    assert bench.images._version == version, f"{variant} modified the input batch in place"


def _point_tensors(inputs) -> torch.Tensor:
    """Dense points as they are, PyG ``[pos, x]`` concatenated: (..., C) with one row per point."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    return torch.cat([inputs.pos] + ([inputs.x] if getattr(inputs, "x", None) is not None else []), dim=-1)


def _input_tensors(bench) -> list[torch.Tensor]:
    """The tensors a point variant reads: the dense points, or the PyG ``pos`` (and ``x`` where present)."""
    if bench.case.layout == "dense":
        return [bench.points]
    return [bench.inputs.pos] + ([bench.inputs.x] if getattr(bench.inputs, "x", None) is not None else [])


def check_point_output(bench, variant: str, out) -> None:
    """Assert that the point-cloud ``variant`` produced what it should on ``bench``'s batch."""
    if variant in ("plain", "plain_masked", "floor_then_step"):
        assert out.ndim == 0 and torch.isfinite(out)
        return
    if variant == "attribution":  # the relevance of the points (dense) or of each node tensor (PyG): checked as the
        # floor's gradients are
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out[key] for key in ("pos", "x") if key in out)
        variant = "floor"
    if variant == "floor":
        assert [gradient.shape for gradient in out] == [tensor.shape for tensor in _input_tensors(bench)]
        assert all(torch.isfinite(gradient).all() for gradient in out)
        assert sum(gradient.abs().sum() for gradient in out) > 0
        return
    # A masked batch of the same clouds: some points zeroed in every channel, the others untouched.
    assert type(out) is type(bench.inputs)
    if bench.case.layout == "pyg":
        assert out.num_graphs == bench.inputs.num_graphs and torch.equal(out.ptr, bench.inputs.ptr)
        assert torch.equal(out.y, bench.inputs.y)
    points, masked = _point_tensors(bench.inputs), _point_tensors(out)
    assert masked.shape == points.shape and masked.dtype == points.dtype
    assert torch.isfinite(masked).all()
    dropped = (masked == 0).all(-1) & (points != 0).any(-1)
    kept = (masked == points).all(-1)
    assert dropped.any(), f"{variant} dropped no point"
    assert kept.any(), f"{variant} dropped every point"
    assert (dropped | kept).all(), f"{variant} changed points other than by zeroing them"


@pytest.mark.parametrize("variant", POINT_VARIANTS)
@pytest.mark.parametrize("case", CPU_POINT_CASES, ids=lambda case: case.name)
def test_point_overhead(benchmark, bench_for, case, variant):
    bench = bench_for(case)
    tensors = _input_tensors(bench)
    versions = [tensor._version for tensor in tensors]
    function = bench.variants()[variant]
    function()  # warm-up
    benchmark.group = case.name
    benchmark.extra_info.update(case=case.name, variant=variant, p=0.5 if variant == "reldrop_half" else 1.0,
                                precision=bench.precision, backend=bench.attribution_precision[variant])
    rounds = SLOW_ROUNDS if variant in bench.slow_variants else ROUNDS
    out = benchmark.pedantic(function, rounds=rounds, iterations=1, warmup_rounds=0)
    check_point_output(bench, variant, out)
    assert [tensor._version for tensor in tensors] == versions, f"{variant} modified the input batch in place"


def check_erasing_output(bench, variant: str, out: torch.Tensor) -> None:
    """Assert that the erasing ``variant`` erased what it should: in every image (cloud) a non-empty region that
    contains its most relevant pixel (point, ``top_k=1``), set to 0 in every channel, within the area bounds of
    ``U(0.02, 0.4)`` (2D: up to rounding of ``h`` and ``w``, and smaller where clipped at the border)."""
    inputs = bench.inputs
    assert out.shape == inputs.shape and out.dtype == inputs.dtype and out.device == inputs.device
    assert torch.isfinite(out).all()
    channel = 1 if bench.case.kind == "erasing2d" else -1
    dropped = (out == 0).all(channel) & (inputs != 0).any(channel)
    kept = (out == inputs).all(channel)
    assert (dropped | kept).all(), f"{variant} changed values other than by erasing them"
    flat = dropped.flatten(1)
    fraction = flat.float().mean(1)
    assert (fraction > 0).all(), f"{variant} left an image (cloud) unerased"
    best = bench.relevance.sum(channel).flatten(1).argmax(1)
    assert flat.gather(1, best[:, None]).all(), f"{variant} did not erase the most relevant pixel (point)"
    if bench.case.kind == "erasing2d":
        assert fraction.max() <= 0.45, f"{variant} erased more than the largest rectangle"
        assert 0.02 < fraction.mean() < 0.4
    else:
        assert not flat.all(1).any(), f"{variant} erased a whole cloud (radius <= 0.3 x diagonal)"


@pytest.mark.parametrize("variant", MASK_VARIANTS)
@pytest.mark.parametrize("case", CPU_ERASING_CASES, ids=lambda case: case.name)
def test_erasing_overhead(benchmark, bench_for, case, variant):
    bench = bench_for(case)
    version = bench.inputs._version
    function = bench.variants()[variant]
    function()  # warm-up
    benchmark.group = case.name
    benchmark.extra_info.update(case=case.name, variant=variant, precision=bench.precision)
    out = benchmark.pedantic(function, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    check_erasing_output(bench, variant, out)
    assert bench.inputs._version == version, f"{variant} modified the input batch in place"
