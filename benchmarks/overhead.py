"""Overhead of a RelDrop step over a plain train step, every variant measured interleaved in one run.

Usage::

    python benchmarks/overhead.py --device cpu
    python benchmarks/overhead.py --device cuda --cases resnet18-32px-b128 --dtype fp32 bf16 --repeats 30

For each case (see ``benchmarks/cases.py``), every variant is warmed up, then timed round-robin (each round runs
every variant once, starting at a rotating position, so that slow drifts of the machine hit all variants alike),
with ``torch.cuda.synchronize()`` before and after each call on CUDA. Erasing cases (issue #5 item 5) have only the
two mask-stage variants (the RelevanceErasing2d / 3d kernels against the published per-sample / per-cloud loops)
and get their own table. The slow variants (zennit backend, the
published baseline, the per-sample mask loop) get fewer repeats (``--slow-repeats``). The tables report medians,
the ratio to the plain step and to the floor of the same run (for the ``attribution`` variant, the attribution
alone: how much of a RelDrop step's extra it is) and, for RelDrop steps, ``(step - plain) / floor``: the extra cost in
units of one eval forward + input gradient, and ``(step - floor_then_step) / floor``: the RelDrop step against the
floor followed by the plain step on a batch RelDrop masked (one of a pool of eight, in turn: a point model's step
costs what the mask makes it), run as one sequence (what an attribution of exactly
one floor with a free mask stage would cost; a step timed right after an attribution is slower than one timed alone,
by what the attribution did to the caches and the allocator, and this column does not count that against RelDrop;
negative: faster than that). On CUDA, the peak memory of one call of each train-step variant
(``torch.cuda.max_memory_allocated`` after a reset) is reported against the plain step's.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import (  # noqa: E402
    ALL_VARIANTS, ALPHA, BETA, CASES, CPU_CASES, CPU_ERASING_CASES, CPU_POINT_CASES, GPU_CASES, GPU_ERASING_CASES,
    GPU_POINT_CASES, MASK_VARIANTS, P, POINT_STEP_VARIANTS, SLOW_VARIANTS, STEP_VARIANTS, Case, ErasingCase, PointCase,
    make_bench, synchronize,
)

RELDROP_VARIANTS = ("reldrop", "reldrop_half", "reldrop_fast", "reldrop_zennit", "published")
MEMORY_VARIANTS = ("plain", "reldrop", "reldrop_fast", "reldrop_zennit", "published")

# Issue #3, item 7 (float32; the RelDrop step with the fast engine over the plain step of the same run).
GPU_STEP_RATIO_TARGETS = {"resnet50-224px-b64": 1.5, "resnet18-32px-b128": 1.25, "resnet18-32px-b512": 1.1}
CPU_FLOOR_TARGET = 1.15  # step_reldrop <= step_plain + 1.15 x floor
# Issue #9 item 6 (CPU, float32, every image and point row, the fast engine): step_reldrop <= step_plain + 1.0 x floor.
FAST_ENGINE_FLOOR_TARGET = 1.0
GPU_MASK_TARGET_MS = 1.0  # mask stage at batch 512, 32 px
GPU_MASK_TARGET_CASE = "resnet18-32px-b512"
GPU_MEMORY_TARGET = 1.1  # peak memory of a RelDrop step over a plain step
# Issue #3 item 7, point clouds (CPU and GPU): the mask stage and fill vectorised at least this many times faster
# than the published per-cloud numpy loop, and the RelDrop step within plain + POINT_FLOOR_TARGET x floor.
POINT_MASK_SPEEDUP_TARGET = 50.0
POINT_FLOOR_TARGET = 1.15
# Issue #5 item 5, erasing (GPU, fp32): the vectorised RelevanceErasing2d / 3d mask stage at least this many times
# faster than the published per-sample (per-cloud) loop, and at most ERASING_MASK_TARGET_MS.
ERASING_SPEEDUP_TARGET = 50.0
ERASING_MASK_TARGET_MS = 1.0
ERASING_COMPARISON = {"erasing2d": "erasing2d vectorised vs per-sample loop",
                      "erasing3d": "erasing3d vectorised vs per-cloud loop"}


@dataclass
class CaseResult:
    """Timings (ms) of every variant of one case at one precision, and peak memory on CUDA (bytes)."""

    case: str
    description: str
    device: str
    precision: str
    attribution: dict[str, str]
    times_ms: dict[str, list[float]] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    kind: str = "image"  # "image", "points", "erasing2d" or "erasing3d"
    backend_warnings: list[str] = field(default_factory=list)  # RelevanceBackendWarning messages seen (points)

    def median(self, variant: str) -> float:
        return statistics.median(self.times_ms[variant])

    def ratio(self, variant: str) -> float:
        """Median of ``variant`` over the median of the plain step."""
        return self.median(variant) / self.median("plain")

    def floors(self, variant: str, plain: str = "plain") -> float:
        """``(median(variant) - median(plain)) / median(floor)``."""
        return (self.median(variant) - self.median(plain)) / self.median("floor")

    def memory_ratio(self, variant: str) -> float:
        return self.peak_bytes[variant] / self.peak_bytes["plain"]


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in ms, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """``torch.cuda.max_memory_allocated`` during one call (after a reset), in bytes."""
    gc.collect()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def case_kind(case: Case | PointCase | ErasingCase) -> str:
    """``"image"``, ``"points"``, or the erasing case's kind (``"erasing2d"``, ``"erasing3d"``)."""
    if isinstance(case, ErasingCase):
        return case.kind
    return "points" if isinstance(case, PointCase) else "image"


def measure_case(case: Case | PointCase | ErasingCase, device: str | torch.device, precision: str = "fp32", *, repeats: int = 20,
                 slow_repeats: int = 5, warmup: int = 2, variants: Sequence[str] = ALL_VARIANTS,
                 log: Callable[[str], None] | None = None) -> CaseResult:
    """Time every variant of ``case`` interleaved (round-robin), after ``warmup`` untimed calls of each.

    Args:
        case: The configuration.
        device: Where to run.
        precision: ``"fp32"`` or ``"bf16"`` (autocast), see :class:`cases.Bench`.
        repeats: Timed calls of each fast variant.
        slow_repeats: Timed calls of each slow variant (:data:`cases.SLOW_VARIANTS` for image cases, ``published``
            for point cases).
        warmup: Untimed calls of each fast variant first (at least one; the slow variants get one).
        variants: Which variants to run (those the case lacks are skipped); ``"plain"`` and ``"floor"`` are always
            included.
        log: Progress messages go here (e.g. ``print`` to stderr).
    """
    device = torch.device(device)
    bench = make_bench(case, device, precision)
    slow = bench.slow_variants
    all_fns = bench.variants()
    names = [name for name in bench.variant_names if name in set(variants) | {"plain", "floor"}]
    fns = {name: all_fns[name] for name in names}
    counts = {name: (slow_repeats if name in slow else repeats) for name in names}
    result = CaseResult(case.name, case.describe(), str(device), precision,
                        {name: bench.attribution_precision[name] for name in names},
                        {name: [] for name in names}, kind=case_kind(case))
    say = log or (lambda message: None)
    say(f"{case.name} [{precision}]: warm-up")
    for name, fn in fns.items():
        for _ in range(1 if name in slow else max(1, warmup)):
            fn()
    synchronize(device)
    rounds = max(counts.values())
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if len(result.times_ms[name]) < counts[name]:
                result.times_ms[name].append(time_call(fns[name], device))
        say(f"{case.name} [{precision}]: round {round_index + 1}/{rounds}")
    if device.type == "cuda":
        for name in MEMORY_VARIANTS:
            if name in fns:
                result.peak_bytes[name] = peak_memory(fns[name], device)
    result.backend_warnings = list(getattr(bench, "backend_warnings", []))
    del bench, fns, all_fns
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------
def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def step_table(results: Sequence[CaseResult]) -> str:
    """Markdown table of the train-step variants: median, ratio to the plain step and to the floor (for the
    ``attribution`` variant: the attribution alone in floors), extra cost in floors. The "attribution in" column of
    point cases also names the backend that ran."""
    masked = any("plain_masked" in result.times_ms for result in results)
    sequence = any("floor_then_step" in result.times_ms for result in results)
    header = ["case", "precision", "variant", "attribution in", "median ms", "n", "x plain step", "x floor",
              "(step - plain) / floor"] + (["(step - plain on the masked batch) / floor"] if masked else []) \
        + (["(step - floor_then_step) / floor"] if sequence else [])
    lines = [_row(header), _row(["---"] * len(header))]
    for result in results:
        for name in (POINT_STEP_VARIANTS if result.kind == "points" else STEP_VARIANTS):
            if name not in result.times_ms:
                continue
            floors = f"{result.floors(name):.2f}" if name in RELDROP_VARIANTS else "-"
            row = [result.description, result.precision, name, result.attribution[name],
                   f"{result.median(name):.2f}", len(result.times_ms[name]), f"{result.ratio(name):.2f}",
                   f"{result.median(name) / result.median('floor'):.2f}", floors]
            if masked:
                row.append(f"{result.floors(name, 'plain_masked'):.2f}"
                           if name in RELDROP_VARIANTS and "plain_masked" in result.times_ms else "-")
            if sequence:
                row.append(f"{result.floors(name, 'floor_then_step'):+.2f}"
                           if name in RELDROP_VARIANTS and "floor_then_step" in result.times_ms else "-")
            lines.append(_row(row))
    return "\n".join(lines)


def mask_table(results: Sequence[CaseResult]) -> str:
    """Markdown table of the mask stage alone: vectorised against the published per-sample loop (for point cases:
    mask rule, keep-least-relevant and fill, against the per-cloud numpy loop)."""
    points = bool(results) and all(result.kind == "points" for result in results)
    loop = "per-cloud numpy loop ms" if points else "per-sample loop ms"
    lines = [
        _row(["case", "precision", "vectorised ms", loop, "loop / vectorised"]),
        _row(["---"] * 5),
    ]
    for result in results:
        if not all(name in result.times_ms for name in MASK_VARIANTS):
            continue
        vectorised, loop = result.median("mask_vectorised"), result.median("mask_loop")
        lines.append(_row([result.description, result.precision, f"{vectorised:.3f}", f"{loop:.2f}",
                           f"{loop / vectorised:.1f}x" if points else f"{loop / vectorised:.0f}x"]))
    return "\n".join(lines)


def erasing_table(results: Sequence[CaseResult]) -> str:
    """Markdown table of the erasing mask stage (issue #5 item 5): the vectorised kernel and its fill against the
    published per-sample loop (2D) or the per-cloud numpy loop (3D)."""
    lines = [
        _row(["case", "comparison", "vectorised ms", "loop ms", "n (vectorised / loop)", "loop / vectorised"]),
        _row(["---"] * 6),
    ]
    for result in results:
        if result.kind not in ERASING_COMPARISON or not all(name in result.times_ms for name in MASK_VARIANTS):
            continue
        vectorised, loop = result.median("mask_vectorised"), result.median("mask_loop")
        lines.append(_row([result.description, ERASING_COMPARISON[result.kind], f"{vectorised:.3f}", f"{loop:.2f}",
                           f"{len(result.times_ms['mask_vectorised'])} / {len(result.times_ms['mask_loop'])}",
                           f"{loop / vectorised:.1f}x"]))
    return "\n".join(lines)


def memory_table(results: Sequence[CaseResult]) -> str:
    """Markdown table of peak CUDA memory of one call of each train-step variant, over the plain step's."""
    lines = [_row(["case", "precision", "variant", "peak MiB", "x plain step"]), _row(["---"] * 5)]
    for result in results:
        for name in MEMORY_VARIANTS:
            if name in result.peak_bytes:
                lines.append(_row([result.description, result.precision, name,
                                   f"{result.peak_bytes[name] / 2**20:.0f}", f"{result.memory_ratio(name):.3f}"]))
    return "\n".join(lines)


def target_checks(results: Sequence[CaseResult]) -> list[tuple[str, str, bool]]:
    """Issue #3 item 7 and issue #9 item 6 targets that apply to ``results`` (float32 only): ``(target, measured,
    met)`` rows."""
    checks = []
    for result in results:
        on_gpu = result.device.startswith("cuda")
        if result.kind in ERASING_COMPARISON:
            # GPU targets only: on a CPU the loop's .item() and numpy round trips cost no device synchronisation.
            if on_gpu and result.precision == "fp32" and all(name in result.times_ms for name in MASK_VARIANTS):
                vectorised = result.median("mask_vectorised")
                speedup = result.median("mask_loop") / vectorised
                where = f"GPU {result.description}"
                speed_target = f"{where}: {ERASING_COMPARISON[result.kind]} >= {ERASING_SPEEDUP_TARGET:.0f}x (issue #5)"
                time_target = f"{where}: erasing mask stage <= {ERASING_MASK_TARGET_MS} ms (issue #5)"
                checks.append((speed_target, f"{speedup:.1f}x", speedup >= ERASING_SPEEDUP_TARGET))
                checks.append((time_target, f"{vectorised:.3f} ms", vectorised <= ERASING_MASK_TARGET_MS))
            continue
        if result.kind == "points" and result.precision == "fp32":
            where = "GPU" if on_gpu else "CPU"
            if all(name in result.times_ms for name in MASK_VARIANTS):
                speedup = result.median("mask_loop") / result.median("mask_vectorised")
                checks.append((f"{where} {result.description}: mask stage + fill >= {POINT_MASK_SPEEDUP_TARGET:.0f}x "
                               "faster than the per-cloud numpy loop", f"{speedup:.1f}x",
                               speedup >= POINT_MASK_SPEEDUP_TARGET))
            if "reldrop" in result.times_ms:
                floors = result.floors("reldrop")
                backend = result.attribution["reldrop"].split(", ", 1)[-1]
                checks.append((f"{where} {result.description}: reldrop ({backend}) <= plain + {POINT_FLOOR_TARGET} x "
                               "floor", f"plain + {floors:.3f} x floor", floors <= POINT_FLOOR_TARGET))
                if not on_gpu:
                    checks.append((f"CPU {result.description}: reldrop ({backend}) <= plain + "
                                   f"{FAST_ENGINE_FLOOR_TARGET} x floor (issue #9)", f"plain + {floors:.2f} x floor",
                                   floors <= FAST_ENGINE_FLOOR_TARGET))
            continue
        if result.precision != "fp32" or "reldrop_fast" not in result.times_ms:
            continue
        if not on_gpu:
            floors = result.floors("reldrop_fast")
            checks.append((f"CPU {result.description}: reldrop_fast <= plain + {CPU_FLOOR_TARGET} x floor",
                           f"plain + {floors:.2f} x floor", floors <= CPU_FLOOR_TARGET))
            checks.append((f"CPU {result.description}: reldrop_fast <= plain + {FAST_ENGINE_FLOOR_TARGET} x floor "
                           "(issue #9)", f"plain + {floors:.2f} x floor", floors <= FAST_ENGINE_FLOOR_TARGET))
            continue
        limit = GPU_STEP_RATIO_TARGETS.get(result.case)
        if limit is not None:
            ratio = result.ratio("reldrop_fast")
            checks.append((f"GPU {result.description}: reldrop_fast / plain <= {limit}", f"{ratio:.2f}",
                           ratio <= limit))
        if result.case == GPU_MASK_TARGET_CASE and "mask_vectorised" in result.times_ms:
            mask_ms = result.median("mask_vectorised")
            checks.append((f"GPU {result.description}: mask stage <= {GPU_MASK_TARGET_MS} ms", f"{mask_ms:.3f} ms",
                           mask_ms <= GPU_MASK_TARGET_MS))
        if "reldrop_fast" in result.peak_bytes:
            ratio = result.memory_ratio("reldrop_fast")
            checks.append((f"GPU {result.description}: peak memory reldrop_fast / plain <= {GPU_MEMORY_TARGET}",
                           f"{ratio:.3f}", ratio <= GPU_MEMORY_TARGET))
    return checks


def targets_table(results: Sequence[CaseResult]) -> str:
    lines = [_row(["target (issue #3 item 7 / issue #5 item 5, fp32)", "measured", "met"]), _row(["---"] * 3)]
    for target, measured, met in target_checks(results):
        lines.append(_row([target, measured, "met" if met else "NOT met"]))
    return "\n".join(lines)


def header(device: torch.device) -> str:
    """Date, machine, versions and settings of this run (markdown)."""
    from importlib.metadata import version

    if device.type == "cuda":
        machine = f"GPU: {torch.cuda.get_device_name(device)}"
    else:
        machine = f"CPU: {_cpu_name()}, torch threads: {torch.get_num_threads()}"
    # the C allocator's settings, where the environment sets them: on CPU they decide how many pages each step
    # faults in again (glibc gives the heap's top back to the system after large frees by default)
    allocator = [f"{name}={os.environ[name]}" for name in sorted(os.environ)
                 if name == "GLIBC_TUNABLES" or name.startswith("MALLOC_") or name == "LD_PRELOAD"]
    if allocator:
        machine += ", allocator settings: " + " ".join(allocator)
    return "\n".join([
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- {machine}",
        f"- torch {torch.__version__}, torchvision {version('torchvision')}, zennit {version('zennit')}, "
        f"python {platform.python_version()}",
        f"- RelDrop: alpha={ALPHA}, beta={BETA}, p={P} (every sample attributed: the worst case), fill 0.0, "
        f"composite epsilon_flat (eps=1e-3); SGD(momentum=0.9) train step; medians of interleaved runs",
        "- point clouds: RelevanceDropout3d(alpha=0.5, beta=0.5, p=1.0, fill='zero', backend='auto'), fp32; "
        "published baseline: zennit attribution of the batch, then a per-cloud numpy loop",
        ("- erasing (mask stage only, fp32, random relevance): Block erasing scale=(0.02, 0.4), "
         "ratio=(0.3, 1/0.3), top_k=1, fill 0.0, vs the published per-sample loop (100 tries); balls "
         "radius=(0.1, 0.3) x diagonal, top_k=1, zero fill, vs a per-cloud numpy loop"),
    ])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(results: Sequence[CaseResult], device: torch.device) -> str:
    """The full markdown report: header, step table, mask table, memory table (CUDA), targets; image and point
    cases in separate tables."""
    images = [result for result in results if result.kind == "image"]
    points = [result for result in results if result.kind == "points"]
    erasing = [result for result in results if result.kind in ERASING_COMPARISON]
    parts = [header(device)]
    if images:
        parts += ["", "### Train step variants", "", step_table(images), "",
                  "### Mask stage alone (same relevance tensor)", "", mask_table(images)]
    if points:
        parts += ["", "### Point clouds: train step variants", "", step_table(points), "",
                  "### Point clouds: mask stage and fill alone (same relevance)", "", mask_table(points)]
        warned = sorted({message for result in points for message in result.backend_warnings})
        if warned:
            parts += ["", "RelevanceBackendWarning seen: " + "; ".join(f"`{message}`" for message in warned)]
    if erasing:
        parts += ["", "### Erasing: mask stage and fill alone (same relevance, issue #5 item 5)", "",
                  erasing_table(erasing)]
        if not any(result.device.startswith("cuda") for result in erasing):
            parts += ["", (f"(The erasing targets, >= {ERASING_SPEEDUP_TARGET:.0f}x and <= {ERASING_MASK_TARGET_MS} "
                           "ms, are GPU targets: they are judged by gpu_overhead.py, not on a CPU.)")]
    if any(result.peak_bytes for result in results):
        parts += ["", "### Peak memory of one step (torch.cuda.max_memory_allocated)", "", memory_table(results)]
    if target_checks(results):
        parts += ["", "### Targets", "", targets_table(results)]
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None,
                        help="default: the CPU cases (image, point, erasing) on --device cpu, the GPU cases on "
                             "--device cuda")
    parser.add_argument("--dtype", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                        help="precision(s): fp32, and/or bf16 autocast (train step, floor and attribution)")
    parser.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(ALL_VARIANTS),
                        help="image cases run reldrop_fast/reldrop_zennit, point cases reldrop; others are skipped")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls of each fast variant")
    parser.add_argument("--slow-repeats", type=int, default=5,
                        help=f"timed calls of each slow variant ({', '.join(SLOW_VARIANTS)}; published for points)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw timings here")
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[CaseResult]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("overhead.py: --device cuda but CUDA is not available.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    defaults = (GPU_CASES + GPU_POINT_CASES + GPU_ERASING_CASES if device.type == "cuda"
                else CPU_CASES + CPU_POINT_CASES + CPU_ERASING_CASES)
    names = args.cases or [case.name for case in defaults]
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    results = []
    for precision in args.dtype:
        for name in names:
            if isinstance(CASES[name], (PointCase, ErasingCase)) and precision != "fp32":
                if log is not None:
                    log(f"{name} [{precision}]: skipped (point and erasing cases run in fp32 only)")
                continue
            if isinstance(CASES[name], ErasingCase) and not set(MASK_VARIANTS) & set(args.variants):
                if log is not None:
                    log(f"{name}: skipped (an erasing case has only the mask_vectorised / mask_loop variants)")
                continue
            results.append(measure_case(CASES[name], device, precision, repeats=args.repeats,
                                        slow_repeats=args.slow_repeats, warmup=args.warmup,
                                        variants=args.variants, log=log))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=1))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    results = run(args)
    print(report(results, torch.device(args.device)))
    print(f"\n(total run time {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
