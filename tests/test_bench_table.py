"""The benchmark table of `bench.run_all`: ratio and verdict with hand values, the markdown and JSON
forms, and one smoke run of the physics benchmark alone (--quick) as a subprocess."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from bench.figures import (
    Figure,
    format_number,
    format_ratio,
    human_lines,
    json_line,
    markdown_table,
    parse_json_line,
    table_rows,
)
from bench.run_all import Outcome, parse_only, table

ROOT = Path(__file__).resolve().parent.parent

DRAIN = Figure(
    "drain",
    38_300.0,
    "records/s",
    ">= 50 % of raw",
    baseline=47_500.0,
    baseline_name="raw client",
    met=38_300 / 47_500 >= 0.5,
)
LOOP = Figure(
    "evaluate", 80.0, "ms", "< 1000 ms", baseline=960.0, baseline_name="Python loop", higher_is_better=False, met=False
)
PLAIN = Figure("throughput", 12.5, "M rows/s")


def test_ratio_is_oriented_so_that_above_one_is_better() -> None:
    assert DRAIN.ratio == pytest.approx(38_300 / 47_500)
    assert DRAIN.ratio_formula == "value/baseline"
    assert LOOP.ratio == pytest.approx(12.0)
    assert LOOP.ratio_formula == "baseline/value"
    assert PLAIN.ratio is None
    assert Figure("zero", 0.0, "ms", baseline=5.0, higher_is_better=False).ratio is None
    assert format_ratio(DRAIN) == "0.81x (value/baseline)"
    assert format_ratio(LOOP) == "12.0x (baseline/value)"
    assert format_ratio(PLAIN) == ""


def test_numbers_have_about_three_significant_digits() -> None:
    assert [format_number(v) for v in (8.724, 80.33, 176.4, 1176.2, 38_312.0)] == [
        "8.72",
        "80.3",
        "176",
        "1,176",
        "38,312",
    ]


def test_markdown_table_rows_and_verdicts() -> None:
    rows = table_rows([DRAIN, LOOP, PLAIN, Figure("a | b", 1.0, "MB")])
    assert rows[0] == (
        "drain",
        "38,300 records/s",
        ">= 50 % of raw",
        "47,500 records/s (raw client)",
        "0.81x (value/baseline)",
        "yes",
    )
    assert rows[1] == ("evaluate", "80.0 ms", "< 1000 ms", "960 ms (Python loop)", "12.0x (baseline/value)", "**NO**")
    assert rows[2] == ("throughput", "12.5 M rows/s", "", "", "", "")
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| figure | value | goal | baseline (same run) | ratio | met |"
    assert lines[1] == "|---|---:|---|---|---:|---|"
    assert lines[2] == (
        "| drain | 38,300 records/s | >= 50 % of raw | 47,500 records/s (raw client) | 0.81x (value/baseline) | yes |"
    )
    assert lines[5].startswith("| a \\| b | 1.00 MB |")  # a pipe in a name does not split the row
    assert all(line.count("|") - line.count("\\|") == 7 for line in lines)  # six columns


def test_a_crashed_benchmark_is_a_row_of_the_table() -> None:
    text = table([Outcome("physics", [PLAIN]), Outcome("gateway", [], "exit status 1")])
    assert "| throughput | 12.5 M rows/s |" in text
    assert "| gateway: CRASHED (exit status 1, see its output above) |" in text


def test_json_line_round_trip_and_human_lines() -> None:
    figures = [DRAIN, LOOP, PLAIN]
    line = json_line(figures)
    assert "\n" not in line
    assert parse_json_line(line) == figures
    with pytest.raises(ValueError):
        parse_json_line('{"other": []}')
    lines = human_lines(figures)
    assert "goal >= 50 % of raw: ok" in lines[0]
    assert "goal < 1000 ms: BELOW GOAL" in lines[1]
    assert "baseline 960 ms (Python loop), ratio 12.0x (baseline/value)" in lines[1]


def test_only_names_benchmarks_in_run_order() -> None:
    assert parse_only("mes,physics") == ["physics", "mes"]
    assert parse_only("bench_historian, bench.bench_mes_raw") == ["mes_raw", "historian"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_only("nope")


def test_quick_physics_run_prints_one_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick", "--only", "physics"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| figure | value | goal | baseline (same run) | ratio | met |"
    assert any(row.startswith("| physics: `compensate_to_20c`, exact form, 100,000 rows") for row in rows)
    evaluate = next(row for row in rows if row.startswith("| physics: `evaluate` (checks"))
    assert " ms | < 1,000 ms | " in evaluate
    assert evaluate.endswith("| yes |")
    compensate = next(row for row in rows if row.startswith("| physics: `compensate_to_20c`"))
    assert "(baseline/value) |" in compensate
    assert any(row.startswith("| physics: `evaluate` throughput |") for row in rows)
    assert "gateway" not in done.stdout
