"""The overhead table on CUDA for the issue's GPU cases, with the targets of issue #3 item 7 (met / not met).

Usage::

    python benchmarks/gpu_overhead.py                # ResNet-18 32 px batch 128 and 512, ResNet-50, MobileNetV2 and
                                                     # EfficientNet-B0 224 px batch 64, PointNet++, PointNet and
                                                     # DGCNN (k 20), 1024 points x 32, dense and PyG, erasing mask
                                                     # stage (2D: batch 512 x 32 px; 3D: 1024 x 32)
    python benchmarks/gpu_overhead.py --repeats 30   # any option of overhead.py, except --device
    python benchmarks/gpu_overhead.py --cases pointnet2-dense-n1024-b32 pointnet2-pyg-n1024-b32   # points only

Runs ``overhead.py``'s measurement (all variants interleaved, medians, peak memory) on ``cuda`` in float32 and with
bf16 autocast, on torchvision models with random weights (100 classes at 32 px, 1000 at 224 px; the issue sets no
target for MobileNetV2 and EfficientNet-B0, whose rows are reported only), and prints the step table, the mask-stage
table, the peak-memory table and the targets next to the measured values. The point-cloud cases
(``cases.GPU_POINT_CASES``, float32 only: skipped under bf16) add their own step and mask tables and the point
targets (mask stage and fill >= 50x faster than the published per-cloud numpy loop; RelDrop step <= plain + 1.15 x
floor). The erasing cases (``cases.GPU_ERASING_CASES``, issue #5 item 5, float32 only) add the rows "erasing2d
vectorised vs per-sample loop" (batch 512, 32 px) and "erasing3d vectorised vs per-cloud loop" (1024 points x 32
clouds, dense) and their targets: at least 50x faster than the loop and the mask stage <= 1 ms, each marked met /
NOT met. Meant to finish in a few minutes on one H200: the slow variants (zennit backend, published baseline,
per-sample mask loop) are timed 5 times. Without CUDA it prints one line saying so and exits with status 0.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead  # noqa: E402
from cases import GPU_CASES, GPU_ERASING_CASES, GPU_POINT_CASES  # noqa: E402

DEFAULTS = ["--dtype", "fp32", "bf16", "--repeats", "20", "--slow-repeats", "5", "--warmup", "3"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        print("gpu_overhead.py: CUDA is not available on this machine; nothing measured.")
        return 0
    if "--device" in argv:
        raise SystemExit("gpu_overhead.py always runs on cuda; use overhead.py for --device cpu.")
    cases = [] if "--cases" in argv else ["--cases", *(case.name for case in GPU_CASES + GPU_POINT_CASES + GPU_ERASING_CASES)]
    args = overhead.parse_args(["--device", "cuda", *DEFAULTS, *cases, *argv])  # later options win
    start = time.perf_counter()
    results = overhead.run(args)
    print(overhead.report(results, torch.device("cuda")))
    print(f"\n(total run time {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
