"""Benchmark of the real CMM format sources through a real gateway process.

A Q-DAS DFQ and a QIF 3 results document of 10,000 characteristics each (one measured part, its
temperature in the file) go through one gateway (`--historian none`, OPC UA on, as the ingest
benchmarks), file after file; the CSV source's rate on CSV files of 10,000 rows is measured in
the same run, as the baseline. Prints rows/s of each source, the ratio to CSV (goal: each at
least 25 % of CSV's rate) and the gateway's peak RSS over the whole run (goal <= 150 MB).

    .venv/bin/python -m bench.bench_formats [--files 5] [--characteristics 10000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.figures import Figure, add_common_arguments, emit, progress
from cmm_twin.formats.qdas import write_dfq
from cmm_twin.formats.qif import write_qif_results
from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from tests.gateway_harness import HEADER, GatewayProcess, free_port

RATIO_GOAL = 0.25
PEAK_RSS_MB = 150.0
START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


def report(characteristics: int, index: int) -> Report:
    """One part of `characteristics` lengths (nominals 10..59 mm, limits -0.01/+0.02 mm), measured
    warm (25.3 degC, a temperature characteristic or ObjectTemperature)."""
    nominals = [10.0 + i % 50 for i in range(characteristics)]
    specs = [
        ReportCharacteristic(i + 1, f"length_{i + 1:05d}", "mm", nominal, -0.01, 0.02, 4)
        for i, nominal in enumerate(nominals)
    ]
    values = [ReportValue(round(n * (1 + 23.6e-6 * 5.3) + (i % 7) * 1e-4, 4)) for i, n in enumerate(nominals)]
    part = ReportPart(f"P{index:06d}", "CMM-01", START + timedelta(seconds=index), values, part_temp_c=25.3)
    return Report("4711-A", "bench part", specs, [part])


def with_temperature(source: Report) -> Report:
    """`source` with the part temperature as a characteristic in degC (how a DFQ carries it)."""
    part = source.parts[0]
    temp = ReportCharacteristic(len(source.characteristics) + 1, "Temperature part", "degC", None, None, None, 2)
    values = [*part.values, ReportValue(part.part_temp_c)]
    moved = ReportPart(part.part_id, part.machine_id, part.timestamp, values)
    return Report(source.part_number, source.part_description, [*source.characteristics, temp], [moved])


def csv_text(source: Report) -> str:
    """The same part as an inbox CSV (one row per characteristic)."""
    part = source.parts[0]
    stamp = part.timestamp.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    rows = [
        f"{stamp},{part.machine_id},{part.part_id},{c.name},AL6061,{c.nominal},0.015,{v.value},{part.part_temp_c},\n"
        for c, v in zip(source.characteristics, part.values, strict=True)
    ]
    return HEADER + "".join(rows)


def run_files(gateway: GatewayProcess, staging: Path, inbox: Path, files: list[tuple[str, bytes]]) -> float:
    """Rename each file into the inbox, one after the other once the previous is processed;
    the seconds all of them took."""
    elapsed = 0.0
    for name, data in files:
        staged = staging / name
        staged.write_bytes(data)
        before = gateway.get_json("/health")["files_processed"]
        started = time.perf_counter()
        os.rename(staged, inbox / name)
        deadline = time.monotonic() + 600
        while gateway.get_json("/health")["files_processed"] <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not processed in 600 s")
            time.sleep(0.005)
        elapsed += time.perf_counter() - started
    return elapsed


def figures(quick: bool = False, *, files: int | None = None, characteristics: int = 10_000) -> list[Figure]:
    """Rows/s of the DFQ, QIF and CSV sources through one gateway, and its peak RSS."""
    files = files or (2 if quick else 5)
    makers: dict[str, Callable[[int], tuple[str, bytes]]] = {
        "csv": lambda i: (f"part{i}.csv", csv_text(report(characteristics, i)).encode()),
        "dfq": lambda i: (f"part{i}.dfq", write_dfq(with_temperature(report(characteristics, 1000 + i)), UTC)),
        "qif": lambda i: (f"part{i}.qif", write_qif_results(report(characteristics, 2000 + i))),
    }
    with tempfile.TemporaryDirectory(prefix="cmm-bench-") as tmp:
        data = Path(tmp) / "data"
        staging = Path(tmp) / "staging"
        staging.mkdir()
        config = Path(tmp) / "gateway.toml"
        config.write_text('[inputs]\ntimezone = "UTC"\n')
        gateway = GatewayProcess(
            [
                "--data-dir", str(data),
                "--http", "127.0.0.1:0",
                "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
                "--historian", "none",
                "--config", str(config),
            ],
            Path(tmp) / "gateway.log",
        )  # fmt: skip
        try:
            gateway.wait_ready(60)
            rates: dict[str, float] = {}
            for kind, make in makers.items():
                progress(f"formats: {files} {kind} files of {characteristics} characteristics")
                written = [make(i) for i in range(files)]
                seconds = run_files(gateway, staging, data / "inbox", written)
                rates[kind] = files * characteristics / seconds
            health = gateway.get_json("/health")
            if health["rows_rejected"]:
                raise AssertionError(f"rows were rejected: see {gateway.log_path}")
            peak_mb = gateway.peak_rss_mb()
        finally:
            gateway.stop()
    out = [Figure(f"formats: CSV source, files of {characteristics} rows, through the gateway", rates["csv"], "rows/s")]
    for kind, label in (("dfq", "Q-DAS DFQ"), ("qif", "QIF 3")):
        ratio = rates[kind] / rates["csv"]
        out.append(
            Figure(
                f"formats: {label} source, files of {characteristics} characteristics, through the gateway",
                rates[kind],
                "rows/s",
                goal=f">= {RATIO_GOAL:.0%} of the CSV source's rate",
                baseline=rates["csv"],
                baseline_name="CSV source, same run",
                met=ratio >= RATIO_GOAL,
            )
        )
    out.append(
        Figure(
            "formats: gateway peak RSS over the run",
            peak_mb,
            "MB",
            goal=f"<= {PEAK_RSS_MB:g} MB",
            higher_is_better=False,
            met=peak_mb <= PEAK_RSS_MB,
        )
    )
    return out


def main() -> None:
    """Run the benchmark and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=None, help="files per format (default 5)")
    parser.add_argument("--characteristics", type=int, default=10_000)
    add_common_arguments(parser)
    args = parser.parse_args()
    emit(figures(args.quick, files=args.files, characteristics=args.characteristics), as_json=args.json)


if __name__ == "__main__":
    main()
