"""Benchmark: vectorised compensation, uncertainty and decision of 1,000,000 rows.

Prints the time of `evaluate` (the whole physics: checks, compensation, GUM uncertainty,
ISO 14253-1 decision, flags) and, as the baseline measured in the same run, a plain Python loop
over the same formula for a sample of rows, scaled to 1,000,000.

    .venv/bin/python -m bench.bench_physics [--rows N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cmm_twin.physics import compensate_to_20c, evaluate, lookup_material


def main() -> None:
    """Run the benchmark and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = args.rows
    rng = np.random.default_rng(1)
    material = lookup_material("AL6061")
    measured_mm = 100.0 + rng.normal(0.0, 0.008, rows)
    part_temp_c = rng.uniform(18.0, 30.0, rows)
    air_temp_c = part_temp_c - rng.uniform(0.0, 4.0, rows)

    best_compensate_s = min(
        _timed(lambda: compensate_to_20c(measured_mm, part_temp_c, material.cte_per_k)) for _ in range(args.repeat)
    )
    best_evaluate_s = min(
        _timed(
            lambda: evaluate(
                measured_mm, part_temp_c, 100.0, 0.010, material.cte_per_k, material.cte_u_per_k, air_temp_c=air_temp_c
            )
        )
        for _ in range(args.repeat)
    )
    sample = 20_000
    measured_list = measured_mm[:sample].tolist()
    temp_list = part_temp_c[:sample].tolist()
    cte = material.cte_per_k
    start = time.perf_counter()
    _ = [m / (1.0 + cte * (t - 20.0)) for m, t in zip(measured_list, temp_list, strict=True)]
    loop_s = (time.perf_counter() - start) * rows / sample

    print(f"rows                                  {rows:>12,}")
    print(f"compensate_to_20c (exact form)        {best_compensate_s * 1000:>9.1f} ms")
    print(f"evaluate (checks+comp+GUM+decision)   {best_evaluate_s * 1000:>9.1f} ms  goal < 1000 ms")
    print(f"evaluate throughput                   {rows / best_evaluate_s / 1e6:>9.1f} M rows/s")
    print(f"baseline: Python loop, exact form     {loop_s * 1000:>9.1f} ms  (scaled from {sample:,} rows)")
    print(f"speed-up of compensate over the loop  {loop_s / best_compensate_s:>9.1f} x")


def _timed(work: object) -> float:
    start = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
