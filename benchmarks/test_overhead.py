"""pytest-benchmark suite: every variant of every CPU case, grouped by case (``make bench``).

Timings are recorded, never asserted: each test only checks that the measured function did its work (a finite
loss, a gradient of the input's shape, a masked batch of the input's shape with some pixels filled and the input
left untouched). Ratios between variants are only meaningful within one run; ``benchmarks/overhead.py`` measures
them interleaved, which is the better comparison on a busy machine.
"""

from __future__ import annotations

import pytest
import torch

from cases import CPU_CASES, SLOW_VARIANTS, VARIANTS, Bench

ROUNDS = 5
SLOW_ROUNDS = 2


def check_output(bench: Bench, variant: str, out: torch.Tensor) -> None:
    """Assert that ``variant`` produced what it should on ``bench``'s batch."""
    images = bench.images
    if variant == "plain":
        assert out.ndim == 0 and torch.isfinite(out)
        return
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.isfinite(out).all()
    if variant == "floor":
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
