"""The QIF source on well-formed QIF 3 results documents: values, limits, units, parts,
temperatures, times and machines, and the records the physics makes of them."""

from __future__ import annotations

import gc
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.gateway.ingest.jobs import read_unit
from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sources import source_for
from cmm_twin.gateway.sources.inputs import InputSettings, PartSettings
from cmm_twin.gateway.sources.qif import QifSource
from cmm_twin.gateway.sources.registry import SOURCES
from cmm_twin.gateway.sources.rows import IngestSettings, ValidRows
from cmm_twin.physics.compensation import Compensation
from cmm_twin.physics.decision import Verdict
from cmm_twin.physics.thermal import Flag, PhysicsConfig
from tests.qif_helpers import BERLIN, FIXTURES, line_of, read, rejection

BRACKET = FIXTURES / "bracket_3_parts.qif"
FEATURES = [
    "D_BORE1", "D_BORE2", "D_PIN", "L_OVERALL", "L_SLOT", "DIST_HOLES", "W_FLANGE", "H_STEP", "DEPTH_POCKET",
    "R_CORNER", "T_WALL", "X_HOLE1", "FLAT_A", "CIRC_BORE1", "CYL_BORE1", "PERP_B", "PAR_C", "POS_HOLE1",
    "POS_HOLE2", "PROF_SURF", "ANG_CHAMFER", "ANG_FACES", "D_REF",
]  # fmt: skip
NAN = math.nan


def row(rows: ValidRows, part_id: str, feature: str) -> int:
    """Index of the row of `feature` on part `part_id`."""
    (index,) = [i for i in range(len(rows)) if rows.part_id[i] == part_id and rows.feature[i] == feature]
    return index


def spec(rows: ValidRows, i: int) -> tuple[float, float, float, float]:
    """nominal, lower, upper, symmetric tolerance of row `i` (NaN where there is none)."""
    return (
        float(rows.nominal_mm[i]),
        float(rows.lower_tol_mm[i]),
        float(rows.upper_tol_mm[i]),
        float(rows.tolerance_mm[i]),
    )


def test_qif_files_are_claimed_by_the_qif_source() -> None:
    for name in ("run.qif", "RUN.QIF", "Bracket 0001.Qif"):
        assert source_for(name, SOURCES) is QifSource, name
    for name in (".run.qif", "run.qif.tmp", "run.qif.part", "run.qifx"):
        assert source_for(name, SOURCES) is None, name


def test_every_measurement_of_three_parts_is_a_row_in_file_order() -> None:
    chunk = read(BRACKET)
    rows = chunk.rows
    assert chunk.errors == []
    assert len(rows) == 69
    assert rows.part_id == ["SN-0001"] * 23 + ["SN-0002"] * 23 + ["SN-0003"] * 23
    assert rows.feature == FEATURES * 3
    assert set(rows.machine_id) == {"CMM-07"} and set(rows.material) == {"AL6061"}
    assert set(rows.source_format) == {"qif"} and set(rows.source_file) == {"bracket_3_parts.qif"}
    assert chunk.end_offset == BRACKET.stat().st_size
    assert chunk.end_line == len(BRACKET.read_text().splitlines())
    assert len(set(rows.measurement_id)) == 69


def test_values_and_lines_are_the_documents() -> None:
    rows = read(BRACKET).rows
    i = row(rows, "SN-0001", "D_BORE1")
    assert rows.measured_mm[i] == 25.0152
    assert rows.line[i] == line_of(BRACKET, "<Value>25.0152</Value>")
    j = row(rows, "SN-0002", "D_BORE2")
    assert rows.measured_mm[j] == 12.0135
    assert rows.line[j] == line_of(BRACKET, "<Value>12.0135</Value>")
    assert rows.measured_mm[row(rows, "SN-0001", "PROF_SURF")] == -0.021


def test_tolerances_symmetric_asymmetric_one_sided_and_as_limits() -> None:
    rows = read(BRACKET).rows
    expected = {
        "D_BORE1": (25.0, 0.0, 0.021, NAN),  # +0.021 / 0
        "D_BORE2": (12.0, -0.01, 0.01, 0.01),  # symmetric: also the tolerance
        "D_PIN": (8.0, -0.014, -0.005, NAN),  # both limits below the nominal
        "H_STEP": (15.0, -0.02, 0.05, NAN),
        "DEPTH_POCKET": (10.0, NAN, 0.1, NAN),  # MaxValue only
        "T_WALL": (3.0, -0.05, NAN, NAN),  # MinValue only
        "X_HOLE1": (35.0, -0.02, 0.02, 0.02),  # DefinedAsLimit: 34.98..35.02 around 35.0
        "D_REF": (50.0, NAN, NAN, NAN),  # NonTolerance MEASURED
    }
    for feature, values in expected.items():
        np.testing.assert_array_equal(spec(rows, row(rows, "SN-0001", feature)), values, err_msg=feature)


def test_geometric_tolerances_are_deviations_from_zero() -> None:
    rows = read(BRACKET).rows
    for feature, zone in (("FLAT_A", 0.02), ("CIRC_BORE1", 0.008), ("PERP_B", 0.03), ("POS_HOLE1", 0.05)):
        assert spec(rows, row(rows, "SN-0002", feature)) == pytest.approx((0.0, NAN, zone, NAN), nan_ok=True)
    # a profile zone lies on both sides of the true profile
    assert spec(rows, row(rows, "SN-0002", "PROF_SURF")) == (0.0, -0.05, 0.05, 0.05)


def test_angles_are_degrees_and_never_compensated() -> None:
    rows = read(BRACKET).rows
    for feature in ("ANG_CHAMFER", "ANG_FACES"):
        i = row(rows, "SN-0001", feature)
        assert rows.unit[i] == "deg" and rows.compensation[i] == Compensation.NONE
    np.testing.assert_array_equal(spec(rows, row(rows, "SN-0001", "ANG_FACES")), (90.0, -0.05, 0.1, NAN))
    assert rows.measured_mm[row(rows, "SN-0002", "ANG_CHAMFER")] == 44.75
    lengths = [i for i in range(len(rows)) if rows.unit[i] == "mm"]
    assert len(lengths) == 63 and {int(rows.compensation[i]) for i in lengths} == {Compensation.GATEWAY}


def test_parts_temperatures_and_times() -> None:
    rows = read(BRACKET).rows
    first, second, third = (row(rows, part, "D_BORE1") for part in ("SN-0001", "SN-0002", "SN-0003"))
    # SN-0001: ObjectTemperature and AmbientTemperature, a TimeStamp per measurement (+01:00)
    assert (rows.part_temp_c[first], rows.air_temp_c[first], rows.flags[first]) == (23.4, 21.2, 0)
    assert math.isnan(rows.part_temp_u_k[first])
    assert rows.timestamp[first] == "2026-11-20T07:15:00.000000Z"
    assert rows.timestamp[row(rows, "SN-0001", "D_REF")] == "2026-11-20T07:18:40.000000Z"
    # SN-0002: no TimeStamps: the component's InspectionStart; no ambient temperature
    assert rows.part_temp_c[second] == 22.0 and math.isnan(rows.air_temp_c[second])
    assert {rows.timestamp[i] for i in range(23, 46)} == {"2026-11-20T07:31:30.000000Z"}
    # SN-0003: no temperature at all (assumed, flagged); InspectionStart without a zone: Europe/Berlin
    assert rows.part_temp_c[third] == 20.0 and rows.part_temp_u_k[third] == pytest.approx(2.0 / math.sqrt(3.0))
    assert rows.flags[third] == Flag.TEMPERATURE_ASSUMED
    assert rows.timestamp[third] == "2026-11-20T07:47:05.000000Z"


def test_zone_less_times_follow_the_configured_zone() -> None:
    tokyo = IngestSettings(inputs=InputSettings(timezone="Asia/Tokyo"))
    rows = read(BRACKET, tokyo).rows
    assert rows.timestamp[row(rows, "SN-0003", "D_BORE1")] == "2026-11-19T23:47:05.000000Z"
    assert rows.timestamp[row(rows, "SN-0001", "D_BORE1")] == "2026-11-20T07:15:00.000000Z"  # had its zone


def test_records_compensated_by_the_physics() -> None:
    records = to_records(read(BRACKET).rows, PhysicsConfig())
    cte = 23.6e-6
    i = records.feature.index("D_BORE1")  # SN-0001 at 23.4 degC
    assert records.compensated_mm[i] == pytest.approx(25.0152 / (1 + cte * (23.4 - 20.0)), abs=1e-12)
    j = records.feature.index("L_OVERALL")  # 51.2 um over the upper limit as measured, inside at 20 degC
    assert records.compensated_mm[j] == pytest.approx(120.0512 / (1 + cte * 3.4), abs=1e-12)
    assert 120.0 + 0.05 - records.compensated_mm[j] == pytest.approx(0.0084, abs=1e-4)
    k = records.part_id.index("SN-0002") + FEATURES.index("L_SLOT")  # at 22.0 degC
    assert records.compensated_mm[k] == pytest.approx(30.01 / (1 + cte * 2.0), abs=1e-12)
    angle = records.feature.index("ANG_CHAMFER")
    assert records.compensated_mm[angle] == 45.12
    assert records.verdict[records.feature.index("D_REF")] == Verdict.UNDEFINED
    pocket = records.part_id.index("SN-0002") + FEATURES.index("DEPTH_POCKET")  # 10.081 vs 10.1: in
    assert records.verdict[pocket] == Verdict.PASS
    slot = records.part_id.index("SN-0003") + FEATURES.index("L_SLOT")  # 30.065 at 20 degC (+-2 K assumed)
    assert records.compensated_mm[slot] == 30.065


def test_the_part_catalogue_keys_on_the_model_number() -> None:
    catalogue = InputSettings(parts={"BRK-4711": PartSettings(material="STEEL_1020", already_compensated=True)})
    rows = read(BRACKET, IngestSettings(inputs=catalogue)).rows
    assert set(rows.material) == {"STEEL_1020"}
    assert {int(c) for c, u in zip(rows.compensation, rows.unit, strict=True) if u == "mm"} == {Compensation.SOURCE}
    assert {int(c) for c, u in zip(rows.compensation, rows.unit, strict=True) if u == "deg"} == {Compensation.NONE}


def test_a_document_in_inches_radians_and_fahrenheit() -> None:
    path = FIXTURES / "shaft_inch.qif"
    chunk = read(path)
    rows = chunk.rows
    assert chunk.errors == [] and rows.part_id == ["A-17"] * 4 + ["A-18"] * 4
    assert rows.feature == ["D_SHAFT", "L_SHAFT", "RUNOUT", "CHAMFER"] * 2
    assert rows.unit == ["mm", "mm", "mm", "deg"] * 2
    assert rows.nominal_mm[0] == 1.25 * 25.4 and rows.measured_mm[0] == 1.2502 * 25.4
    assert (rows.lower_tol_mm[0], rows.upper_tol_mm[0]) == (-0.0005 * 25.4, 0.0005 * 25.4)
    assert (rows.nominal_mm[1], rows.lower_tol_mm[1], rows.upper_tol_mm[1]) == (6.0 * 25.4, -0.002 * 25.4, 0.005 * 25.4)
    assert (rows.nominal_mm[2], rows.upper_tol_mm[2], rows.measured_mm[6]) == (0.0, 0.001 * 25.4, 0.0012 * 25.4)
    assert rows.nominal_mm[3] == pytest.approx(45.0, abs=1e-5) and rows.measured_mm[3] == pytest.approx(45.12, abs=1e-5)
    assert rows.upper_tol_mm[3] == pytest.approx(0.5, abs=1e-5)
    assert rows.part_temp_c[0] == pytest.approx(22.0) and rows.air_temp_c[0] == pytest.approx(20.0)
    assert rows.part_temp_c[4] == pytest.approx(23.0) and math.isnan(rows.air_temp_c[4])
    assert rows.timestamp[0] == "2026-11-21T19:02:00.000000Z"


def test_without_a_named_device_the_configured_machine(tmp_path: Path) -> None:
    text = BRACKET.read_text().replace("<Name>CMM-07</Name>", "<Name>  </Name>")
    path = tmp_path / "no_device.qif"
    path.write_text(text)
    rows = read(path, IngestSettings(inputs=InputSettings(machine_id="CMM-99", timezone="UTC"))).rows
    assert set(rows.machine_id) == {"CMM-99"}


def test_read_as_one_unit_once_closed_or_stable(tmp_path: Path) -> None:
    """A document whose root element is closed is read at once; one cut short (a writer still
    at it) waits until it is stable."""
    path = tmp_path / "bracket.qif"
    shutil.copy(BRACKET, path)
    source = QifSource(BERLIN)
    size = path.stat().st_size
    (chunk,) = read_unit(source, path, 0, 1, -1)  # not stable yet, but complete
    assert len(chunk.rows) == 69 and chunk.end_offset == size
    path.write_bytes(BRACKET.read_bytes()[: size // 2])
    assert list(read_unit(source, path, 0, 1, -1)) == []  # cut short, not stable: left for later


def test_a_characteristic_measured_twice_on_a_part_gives_two_distinct_records(tmp_path: Path) -> None:
    text = BRACKET.read_text()
    second = text.index("<Value>25.0098</Value>")
    start = text.rindex("<DiameterCharacteristicMeasurement", 0, second)
    end = text.index("</DiameterCharacteristicMeasurement>", second) + len("</DiameterCharacteristicMeasurement>")
    again = text[start:end].replace('id="', 'id="9', 1).replace("25.0098", "25.0101")
    path = tmp_path / "twice.qif"
    path.write_text(text[:end] + "\n            " + again + text[end:])
    rows = read(path).rows
    assert len(rows) == 70 and len(set(rows.measurement_id)) == 70
    bores = [
        (p, f, float(v))
        for p, f, v in zip(rows.part_id, rows.feature, rows.measured_mm, strict=True)
        if f.startswith("D_BORE1")
    ]
    assert bores == [
        ("SN-0001", "D_BORE1_6", 25.0152),
        ("SN-0002", "D_BORE1_6", 25.0098),
        ("SN-0002", "D_BORE1_6.2", 25.0101),  # the item id (6) and the repetition
        ("SN-0003", "D_BORE1_6", 25.001),
    ]


def test_the_garbage_collector_is_paused_only_while_a_document_is_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qif"
    bad.write_text("<QIFDocument>")
    assert gc.isenabled()
    read(BRACKET)
    assert gc.isenabled()
    rejection(bad)
    assert gc.isenabled()
    gc.disable()
    try:
        read(BRACKET)
        assert not gc.isenabled()  # paused by someone else before: left paused
    finally:
        gc.enable()
