"""Benchmark: vectorised compensation, uncertainty and decision of 1,000,000 rows.

Prints the time of `evaluate` (the whole physics: checks, compensation, GUM uncertainty,
ISO 14253-1 decision, flags; goal < 1000 ms) and, as the baseline measured in the same run, a plain
Python loop over the exact compensation formula for a sample of rows, scaled to the row count.

    .venv/bin/python -m bench.bench_physics [--rows N] [--repeat 5] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from bench.figures import Figure, add_common_arguments, emit
from cmm_twin.physics import compensate_to_20c, evaluate, lookup_material

LOOP_SAMPLE = 20_000
EVALUATE_GOAL_MS = 1000.0


def figures(quick: bool = False, *, rows: int | None = None, repeat: int = 5) -> list[Figure]:
    """Measure compensate_to_20c and evaluate (best of `repeat`) and the Python loop, in one run."""
    rows = rows or (100_000 if quick else 1_000_000)
    rng = np.random.default_rng(1)
    material = lookup_material("AL6061")
    measured_mm = 100.0 + rng.normal(0.0, 0.008, rows)
    part_temp_c = rng.uniform(18.0, 30.0, rows)
    air_temp_c = part_temp_c - rng.uniform(0.0, 4.0, rows)

    best_compensate_s = min(
        _timed(lambda: compensate_to_20c(measured_mm, part_temp_c, material.cte_per_k)) for _ in range(repeat)
    )
    best_evaluate_s = min(
        _timed(
            lambda: evaluate(
                measured_mm, part_temp_c, 100.0, 0.010, material.cte_per_k, material.cte_u_per_k, air_temp_c=air_temp_c
            )
        )
        for _ in range(repeat)
    )
    sample = min(LOOP_SAMPLE, rows)
    measured_list = measured_mm[:sample].tolist()
    temp_list = part_temp_c[:sample].tolist()
    cte = material.cte_per_k
    start = time.perf_counter()
    _ = [m / (1.0 + cte * (t - 20.0)) for m, t in zip(measured_list, temp_list, strict=True)]
    loop_ms = (time.perf_counter() - start) * rows / sample * 1000
    scaled = f"scaled from {sample:,} rows" if sample < rows else f"{rows:,} rows"

    compensate_ms = best_compensate_s * 1000
    evaluate_ms = best_evaluate_s * 1000
    return [
        Figure(
            f"physics: `compensate_to_20c`, exact form, {rows:,} rows (best of {repeat})",
            compensate_ms,
            "ms",
            baseline=loop_ms,
            baseline_name=f"plain Python loop of the exact form, {scaled}",
            higher_is_better=False,
        ),
        Figure(
            f"physics: `evaluate` (checks, compensation, GUM, decision, flags), {rows:,} rows (best of {repeat})",
            evaluate_ms,
            "ms",
            goal=f"< {EVALUATE_GOAL_MS:,.0f} ms",
            higher_is_better=False,
            met=evaluate_ms < EVALUATE_GOAL_MS,
        ),
        Figure("physics: `evaluate` throughput", rows / best_evaluate_s / 1e6, "M rows/s"),
    ]


def main() -> None:
    """Run the benchmark and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--repeat", type=int, default=5)
    add_common_arguments(parser)
    args = parser.parse_args()
    emit(figures(args.quick, rows=args.rows, repeat=args.repeat), as_json=args.json)


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
