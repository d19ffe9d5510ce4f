"""Asymmetric and one-sided tolerances of the CSV source: the optional columns `lower_tol_mm` and
`upper_tol_mm` (signed, relative to the nominal) instead of `tolerance_mm`; verdicts computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sources.csv import CsvSource
from cmm_twin.gateway.sources.csv.zones import BOTH_GIVEN, NO_TOLERANCE
from cmm_twin.gateway.sources.rows import FileRejected, IngestSettings, ParsedChunk, RowError, ValidRows
from cmm_twin.physics.decision import VERDICT_NAMES
from cmm_twin.physics.thermal import PhysicsConfig

SOURCE = CsvSource(IngestSettings())
LIMITS_HEADER = (
    "timestamp,machine_id,part_id,feature,material,nominal_mm,lower_tol_mm,upper_tol_mm,measured_mm,part_temp_c"
)
ALL_HEADER = (
    "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,lower_tol_mm,upper_tol_mm,"
    "measured_mm,part_temp_c"
)
AL6061_CTE = 23.6e-6
EXPANSION_25C = 1.0 + AL6061_CTE * (25.0 - 20.0)
"""measured = L20 * (1 + a * (T - 20)) at T = 25 degC; compensated = measured / this."""


def expanded_u_um(length_mm: float) -> float:
    """U = 2 u_c at 25 degC, AL6061, the default budget (README, 'The physics, by hand'):
    u_c^2 = (L dT u(a))^2 + (L a u(T))^2 + ((A + L/K) / sqrt 3)^2 + u_rep^2, u(a) = 0.1 a / sqrt 3,
    u(T) = 0.2 K, A = 1.5 um, K = 333 mm/um, u_rep = 0.5 um."""
    length_um = length_mm * 1000.0
    u_cte = 0.1 * AL6061_CTE / math.sqrt(3.0)
    variance = (
        (length_um * 5.0 * u_cte) ** 2
        + (length_um * AL6061_CTE * 0.2) ** 2
        + ((1.5 + length_mm / 333.0) / math.sqrt(3.0)) ** 2
        + 0.5**2
    )
    return 2.0 * math.sqrt(variance)


def measured_at_25c(deviation_um: float, nominal_mm: float = 10.0) -> str:
    """The reading at 25 degC of a part whose length at 20 degC is nominal + deviation."""
    return repr((nominal_mm + deviation_um / 1000.0) * EXPANSION_25C)


def row(line: int, tolerances: str, measured: str) -> str:
    """A data row (part P<line>) with `tolerances` in the header's tolerance columns."""
    return f"2026-11-27T08:00:00.000Z,CMM-01,P{line:04d},bore,AL6061,10.0,{tolerances},{measured},25.0"


def write(tmp_path: Path, header: str, rows: list[str], name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def read(path: Path) -> tuple[ValidRows, list[RowError]]:
    chunk = SOURCE.read(path)
    assert isinstance(chunk, ParsedChunk)
    return chunk.rows, chunk.errors


def nan_list(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values.tolist()]


def test_expanded_uncertainty_at_10_mm_by_hand() -> None:
    # 0.0681^2 + 0.0472^2 + 0.8834^2 + 0.5^2 = 1.0372 um^2 -> u_c = 1.01843 um, U = 2.03686 um
    assert expanded_u_um(10.0) == pytest.approx(2.03686, abs=1e-5)


def test_asymmetric_zone_verdicts_at_the_zone_edges(tmp_path: Path) -> None:
    # Zone -0.005 / +0.015 mm, U = 2.0369 um: acceptance [-2.963, 12.963] um, FAIL beyond
    # [-7.037, 17.037] um. Each deviation lies 0.2..0.3 um on one side of an edge.
    deviations = [-7.3, -6.8, -3.2, -2.7, 0.0, 12.7, 13.2, 16.8, 17.3]
    expected = ["FAIL", "UNCERTAIN", "UNCERTAIN", "PASS", "PASS", "PASS", "UNCERTAIN", "UNCERTAIN", "FAIL"]
    u = expanded_u_um(10.0)
    for d, verdict in zip(deviations, expected, strict=True):  # the expectation follows from the zone
        if d < -5.0 - u or d > 15.0 + u:
            assert verdict == "FAIL"
        elif -5.0 + u <= d <= 15.0 - u:
            assert verdict == "PASS"
        else:
            assert verdict == "UNCERTAIN"
    lines = [row(i + 2, "-0.005,+0.015", measured_at_25c(d)) for i, d in enumerate(deviations)]
    rows, errors = read(write(tmp_path, LIMITS_HEADER, lines))
    assert errors == []
    assert rows.lower_tol_mm.tolist() == [-0.005] * 9
    assert rows.upper_tol_mm.tolist() == [0.015] * 9
    assert nan_list(rows.tolerance_mm) == [None] * 9
    records = to_records(rows, PhysicsConfig())
    measured = np.array([float(measured_at_25c(d)) for d in deviations])
    compensated = measured / EXPANSION_25C
    assert records.compensated_mm == pytest.approx(compensated, abs=1e-12)
    assert records.deviation_um == pytest.approx(deviations, abs=1e-9)
    assert records.uncertainty_um == pytest.approx([expanded_u_um(m) for m in measured], abs=1e-9)
    assert VERDICT_NAMES[records.verdict].tolist() == expected
    assert nan_list(records.tolerance_mm) == [None] * 9


def test_one_sided_rows(tmp_path: Path) -> None:
    u = expanded_u_um(10.0)
    assert 15.0 + u < 17.3 and 15.0 - u < 13.2  # upper edge as above
    cases = [
        (",0.015", -50.0, "PASS"),  # no lower limit: far below the nominal still passes
        (",0.015", 13.2, "UNCERTAIN"),
        (",0.015", 17.3, "FAIL"),
        ("-0.005,", 50.0, "PASS"),  # no upper limit
        ("-0.005,", -6.8, "UNCERTAIN"),
        ("-0.005,", -7.3, "FAIL"),
    ]
    lines = [row(i + 2, tol, measured_at_25c(d)) for i, (tol, d, _) in enumerate(cases)]
    rows, errors = read(write(tmp_path, LIMITS_HEADER, lines))
    assert errors == []
    assert nan_list(rows.lower_tol_mm) == [None, None, None, -0.005, -0.005, -0.005]
    assert nan_list(rows.upper_tol_mm) == [0.015, 0.015, 0.015, None, None, None]
    assert nan_list(rows.tolerance_mm) == [None] * 6
    records = to_records(rows, PhysicsConfig())
    assert VERDICT_NAMES[records.verdict].tolist() == [verdict for _, _, verdict in cases]


def test_a_header_with_only_one_limit_column(tmp_path: Path) -> None:
    header = LIMITS_HEADER.replace("lower_tol_mm,", "")
    rows, errors = read(write(tmp_path, header, [row(2, "0.02", "10.0")]))
    assert errors == []
    assert nan_list(rows.lower_tol_mm) == [None]
    assert rows.upper_tol_mm.tolist() == [0.02]
    records = to_records(rows, PhysicsConfig())
    # compensated 10 / 1.000118 = 9.99882 mm: deviation -1.18 um, no lower limit: PASS
    assert records.deviation_um.tolist() == pytest.approx([(10.0 / EXPANSION_25C - 10.0) * 1000.0], abs=1e-9)
    assert VERDICT_NAMES[records.verdict].tolist() == ["PASS"]


def test_symmetric_and_asymmetric_rows_in_one_file(tmp_path: Path) -> None:
    lines = [
        row(2, "0.010,,", "10.0"),  # symmetric by tolerance_mm
        row(3, ",-0.01,0.01", "10.0"),  # equal and opposite limits: also given as tolerance_mm
        row(4, ",-0.002,0.004", "10.0"),
        row(5, ",0.001,0.004", "10.0"),  # a zone above the nominal
        row(6, ",0,0", "10.0"),  # a zone of width 0 (any deviation fails or is uncertain)
    ]
    rows, errors = read(write(tmp_path, ALL_HEADER, lines))
    assert errors == []
    assert nan_list(rows.tolerance_mm) == [0.01, 0.01, None, None, None]
    assert rows.lower_tol_mm.tolist() == [-0.01, -0.01, -0.002, 0.001, 0.0]
    assert rows.upper_tol_mm.tolist() == [0.01, 0.01, 0.004, 0.004, 0.0]
    records = to_records(rows, PhysicsConfig())
    # deviation (10 / 1.000118 - 10) mm = -1.180 um, U = 2.037 um:
    # zone [-10, 10] um: inside [-10 + U, 10 - U] -> PASS (twice);
    # zone [-2, 4] um: outside [0.037, 1.963] but inside [-4.037, 6.037] -> UNCERTAIN;
    # zone [1, 4] um: below 1 - U = -1.037 -> FAIL; zone [0, 0]: inside [-U, U] -> UNCERTAIN
    assert VERDICT_NAMES[records.verdict].tolist() == ["PASS", "PASS", "UNCERTAIN", "FAIL", "UNCERTAIN"]


def test_row_errors_of_the_tolerance_columns(tmp_path: Path) -> None:
    lines = [
        row(2, "0.010,,", "10.0"),  # valid
        row(3, "0.010,-0.005,", "10.0"),  # tolerance and a limit
        row(4, "0.010,,0.015", "10.0"),
        row(5, ",,", "10.0"),  # no tolerance at all
        row(6, ",0.015,-0.005", "10.0"),  # lower above upper
        row(7, ",abc,0.015", "10.0"),
        row(8, ",-0.005,2e4", "10.0"),  # beyond max_length_mm
        row(9, "-0.01,,", "10.0"),  # a symmetric tolerance must be > 0
        row(10, ",,", "x"),  # the first problem in contract order: the tolerance
        row(11, ",-0.005,0.015", "x"),
        row(12, ",-inf,0.015", "10.0"),
    ]
    rows, errors = read(write(tmp_path, ALL_HEADER, lines))
    assert rows.line.tolist() == [2]
    assert errors == [
        RowError(3, "lower_tol_mm", BOTH_GIVEN),
        RowError(4, "upper_tol_mm", BOTH_GIVEN),
        RowError(5, None, NO_TOLERANCE),
        RowError(6, "lower_tol_mm", "must not exceed upper_tol_mm (-0.005), got 0.015"),
        RowError(7, "lower_tol_mm", "not a number: 'abc'"),
        RowError(8, "upper_tol_mm", "must be within +-10000 mm (limits.max_length_mm), got 20000.0"),
        RowError(9, "tolerance_mm", "must be > 0, got -0.01"),
        RowError(10, None, NO_TOLERANCE),
        RowError(11, "measured_mm", "not a number: 'x'"),
        RowError(12, "lower_tol_mm", "not a finite number: '-inf'"),
    ]
    assert NO_TOLERANCE == "no tolerance: give tolerance_mm or lower_tol_mm / upper_tol_mm"


def test_empty_tolerance_without_limit_columns_is_still_a_missing_value(tmp_path: Path) -> None:
    header = LIMITS_HEADER.replace("lower_tol_mm,upper_tol_mm", "tolerance_mm")
    rows, errors = read(write(tmp_path, header, [row(2, "0.01", "10.0"), row(3, "", "10.0")]))
    assert rows.line.tolist() == [2]
    assert errors == [RowError(3, "tolerance_mm", "missing value")]


def test_a_header_without_any_tolerance_column_rejects_the_file(tmp_path: Path) -> None:
    header = LIMITS_HEADER.replace("lower_tol_mm,upper_tol_mm,", "")
    with pytest.raises(FileRejected) as caught:
        SOURCE.read(write(tmp_path, header, ["2026-11-27T08:00:00Z,CMM-01,P1,bore,AL6061,10.0,10.0,25.0"]))
    assert (caught.value.reason, caught.value.line) == (
        "missing required column(s): tolerance_mm (or lower_tol_mm / upper_tol_mm)",
        1,
    )


def test_a_limit_column_named_twice_rejects_the_file(tmp_path: Path) -> None:
    header = LIMITS_HEADER + ",Upper_Tol_mm"
    with pytest.raises(FileRejected) as caught:
        SOURCE.read(write(tmp_path, header, [row(2, "-0.005,0.015", "10.0") + ",0.015"]))
    assert caught.value.reason == "duplicate column(s): upper_tol_mm"


def test_valid_rows_beside_bad_ones_keep_their_zones(tmp_path: Path) -> None:
    # A bad value takes the chunk off the fast path (all columns at once): the zones must not change.
    good = [row(i, ",-0.005,0.015" if i % 2 else "0.02,,", measured_at_25c(i / 10)) for i in range(2, 12)]
    clean, no_errors = read(write(tmp_path, ALL_HEADER, good, "clean.csv"))
    mixed, errors = read(write(tmp_path, ALL_HEADER, [*good, row(12, ",-0.005,0.015", "nan")], "mixed.csv"))
    assert no_errors == [] and errors == [RowError(12, "measured_mm", "not a finite number: 'nan'")]
    for name in ("tolerance_mm", "lower_tol_mm", "upper_tol_mm", "measured_mm"):
        assert getattr(mixed, name).tobytes() == getattr(clean, name).tobytes()
    assert nan_list(clean.tolerance_mm) == [0.02, None] * 5


def test_read_many_gives_what_read_gives(tmp_path: Path) -> None:
    files = [
        write(tmp_path, ALL_HEADER, [row(2, ",-0.005,0.015", "10.0"), row(3, ",,", "10.0")], "a.csv"),
        write(tmp_path, ALL_HEADER, [row(2, "0.01,,", "10.0"), row(3, "0.01,-0.01,", "10.0")], "b.csv"),
        write(tmp_path, LIMITS_HEADER, [row(2, ",0.015", "10.0")], "c.csv"),
    ]
    together = SOURCE.read_many(files)
    for path, got in zip(files, together, strict=True):
        alone = SOURCE.read(path)
        assert isinstance(got, ParsedChunk) and isinstance(alone, ParsedChunk)
        assert got.errors == alone.errors
        for name in ("line", "tolerance_mm", "lower_tol_mm", "upper_tol_mm", "measured_mm"):
            assert getattr(got.rows, name).tobytes() == getattr(alone.rows, name).tobytes()


def test_symmetric_files_keep_their_rows(tmp_path: Path) -> None:
    # the usual file (tolerance_mm only): lower = -tol, upper = +tol, as before the limit columns
    header = LIMITS_HEADER.replace("lower_tol_mm,upper_tol_mm", "tolerance_mm")
    rows, errors = read(write(tmp_path, header, [row(2, "0.01", "10.0"), row(3, "0.02", "10.0")]))
    assert errors == []
    assert rows.tolerance_mm.tolist() == [0.01, 0.02]
    assert rows.lower_tol_mm.tolist() == [-0.01, -0.02]
    assert rows.upper_tol_mm.tolist() == [0.01, 0.02]
    assert rows.upper_tol_mm is not rows.tolerance_mm
