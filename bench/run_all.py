"""Every benchmark of the project, one after the other (`make bench`).

.venv/bin/python -m bench.run_all
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("bench.bench_physics", "bench.bench_gateway", "bench.bench_mes_raw", "bench.bench_mes")


def main() -> int:
    """Run each benchmark module in its own process; returns non-zero if one failed."""
    failed = 0
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        failed += subprocess.run([sys.executable, "-m", module], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
