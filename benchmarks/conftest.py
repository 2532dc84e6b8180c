"""Fixtures of the pytest-benchmark suite: one bench per case (``cases.make_bench``), built once per session.

The suite runs on the CPU only (``benchmarks/gpu_overhead.py`` is the GPU counterpart). Set
``RELDROP_BENCH_THREADS`` to fix ``torch.set_num_threads`` (on a shared machine, 1 thread avoids the long
stalls of an OpenMP team whose threads are descheduled by other processes).
"""

from __future__ import annotations

import os

import pytest
import torch

from cases import Case, ErasingCase, PointCase, make_bench


def pytest_configure(config) -> None:
    threads = os.environ.get("RELDROP_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def bench_for():
    """Factory ``bench_for(case)`` on the CPU in float32 (a ``Bench``, a ``point_cases.PointBench`` for a point
    case, an ``erasing_cases.ErasingBench`` for an erasing case), cached: the variants of a case share a model."""
    benches: dict = {}

    def get(case: Case | PointCase | ErasingCase):
        if case.name not in benches:
            benches[case.name] = make_bench(case, "cpu", "fp32")
        return benches[case.name]

    return get
