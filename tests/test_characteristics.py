"""The one place every real CMM format settles units, temperatures, materials, compensation and
names: `RowBuilder` on the neutral Characteristic / Part / Reading model, and the `[inputs]`
settings it follows."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.config import load_config
from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sources.characteristics import Characteristic, Part, Reading, RowBuilder
from cmm_twin.gateway.sources.inputs import InputSettings, PartSettings
from cmm_twin.gateway.sources.rows import IngestSettings, ParsedChunk
from cmm_twin.physics.compensation import Compensation
from cmm_twin.physics.thermal import Flag, PhysicsConfig
from cmm_twin.records import measurement_id

MOMENT = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)


def _settings(**inputs: object) -> IngestSettings:
    return IngestSettings(inputs=InputSettings(**inputs))  # type: ignore[arg-type]


def _build(readings: list[Reading], settings: IngestSettings | None = None) -> ParsedChunk:
    chunk = RowBuilder(settings or _settings(), "qdas").build(readings, [], "run1.dfq", 100, 40)
    assert chunk is not None
    return chunk


def test_units_are_converted_and_angles_kept_in_degrees() -> None:
    part = Part("P1", "4711-A", "7", MOMENT, part_temp_c=25.0)
    bore = Characteristic("1", "Bore Ø12 H7", "mm", 12.0, 0.0, 0.018, 10)
    flat = Characteristic("2", "Flatness", "µm", 0.0, None, 20.0, 11)
    width = Characteristic("3", "Width", "inch", 1.0, -0.002, 0.002, 12)
    angle = Characteristic("4", "Angle A", "°", 90.0, -0.1, 0.1, 13)
    rows = _build(
        [
            Reading(bore, part, 12.0095, 20),
            Reading(flat, part, 7.5, 21),
            Reading(width, part, 1.0005, 22),
            Reading(angle, part, 90.02, 23),
        ]
    ).rows
    assert rows.feature == ["Bore__12_H7", "Flatness", "Width", "Angle_A"]
    assert rows.unit == ["mm", "mm", "mm", "deg"]
    assert rows.measured_mm.tolist() == pytest.approx([12.0095, 0.0075, 25.4127, 90.02])
    assert rows.nominal_mm.tolist() == pytest.approx([12.0, 0.0, 25.4, 90.0])
    assert rows.lower_tol_mm.tolist()[0] == 0.0
    assert math.isnan(rows.lower_tol_mm[1]) and rows.upper_tol_mm[1] == pytest.approx(0.02)
    assert rows.lower_tol_mm[2] == pytest.approx(-0.0508) and rows.upper_tol_mm[2] == pytest.approx(0.0508)
    assert rows.tolerance_mm[2] == pytest.approx(0.0508)  # equal and opposite: also the symmetric tolerance
    assert math.isnan(rows.tolerance_mm[0]) and math.isnan(rows.tolerance_mm[1])
    assert rows.compensation.tolist() == [Compensation.GATEWAY] * 3 + [Compensation.NONE]
    assert rows.machine_id == ["7"] * 4
    assert rows.source_format == ["qdas"] * 4 and rows.source_file == ["run1.dfq"] * 4
    assert rows.measurement_id[0] == measurement_id("7", "P1", "Bore__12_H7", MOMENT)
    records = to_records(rows, PhysicsConfig())
    # 12.0095 mm at 25 degC: 12.0095 / (1 + 23.6e-6 * 5) = 12.0080830 mm
    assert records.compensated_mm[0] == pytest.approx(12.0095 / 1.000118, abs=1e-9)
    assert records.compensated_mm[3] == 90.02


def test_temperature_characteristics_are_the_parts_temperatures() -> None:
    """A characteristic in degC, or described as a temperature, is not a record: the part's (or,
    described as the air's, the air's) temperature; two part readings are averaged."""
    part = Part("P1", timestamp=MOMENT)
    other = Part("P2", timestamp=MOMENT)
    length = Characteristic("1", "Length", "mm", 100.0, -0.01, 0.01, 5)
    sensor_a = Characteristic("2", "Temp part A", "°C", None, None, None, 6)
    sensor_b = Characteristic("3", "Werkstücktemperatur", "", None, None, None, 7)
    air = Characteristic("4", "Air temperature", "degC", None, None, None, 8)
    fahrenheit = Characteristic("5", "T", "°F", None, None, None, 9)
    rows = _build(
        [
            Reading(length, part, 100.0118, 20),
            Reading(sensor_a, part, 24.8, 21),
            Reading(sensor_b, part, 25.2, 22),
            Reading(air, part, 21.5, 23),
            Reading(length, other, 100.0, 30),
            Reading(fahrenheit, other, 77.0, 31),
        ]
    ).rows
    assert len(rows) == 2
    assert rows.part_temp_c.tolist() == pytest.approx([25.0, 25.0])
    assert rows.air_temp_c[0] == 21.5 and math.isnan(rows.air_temp_c[1])
    assert rows.flags.tolist() == [0, 0]
    stated = Part("P3", timestamp=MOMENT, part_temp_c=23.0)
    rows = _build([Reading(length, stated, 100.0, 40), Reading(sensor_a, stated, 24.8, 41)]).rows
    assert rows.part_temp_c.tolist() == [23.0], "a temperature the file states directly comes first"


def test_no_temperature_means_the_assumed_one_with_its_uncertainty() -> None:
    part = Part("P1", timestamp=MOMENT)
    length = Characteristic("1", "Length", "mm", 100.0, -0.01, 0.01, 5)
    rows = _build([Reading(length, part, 100.0, 20)], _settings(assumed_temp_c=21.0)).rows
    assert rows.part_temp_c.tolist() == [21.0]
    assert rows.part_temp_u_k[0] == pytest.approx(2.0 / math.sqrt(3.0))
    assert rows.flags.tolist() == [Flag.TEMPERATURE_ASSUMED]
    records = to_records(rows, PhysicsConfig())
    assert "temperature_assumed" in records.to_dicts()[0]["flags"]


def test_catalogue_material_and_already_compensated_per_part() -> None:
    settings = _settings(parts={"4711-A": PartSettings("STEEL_1020", True), "4711-B": PartSettings("SS304")})
    length = Characteristic("1", "Length", "mm", 100.0, -0.01, 0.01, 5)
    readings = [
        Reading(length, Part("P1", "4711-A", timestamp=MOMENT, part_temp_c=25.0), 100.0, 10),
        Reading(length, Part("P2", "4711-B", timestamp=MOMENT, part_temp_c=25.0), 100.0, 11),
        Reading(length, Part("P3", "unknown", timestamp=MOMENT, part_temp_c=25.0), 100.0, 12),
    ]
    rows = _build(readings, settings).rows
    assert rows.material == ["STEEL_1020", "SS304", "AL6061"]
    assert rows.compensation.tolist() == [Compensation.SOURCE, Compensation.GATEWAY, Compensation.GATEWAY]
    records = to_records(rows, PhysicsConfig()).to_dicts()
    assert records[0]["compensation"] == "source" and records[0]["compensated_mm"] == 100.0


def test_duplicate_descriptions_get_their_number_and_bad_values_are_row_errors() -> None:
    part = Part("P1", timestamp=MOMENT, part_temp_c=20.0)
    pos_a = Characteristic("7", "Position", "mm", 0.0, None, 0.05, 5)
    pos_b = Characteristic("8", "Position", "mm", 0.0, None, 0.05, 6)
    odd_unit = Characteristic("9", "Roughness", "Ra", 1.6, None, 0.4, 7, field="K2142/9")
    no_nominal = Characteristic("10", "Gap", "mm", None, -0.1, 0.1, 8, field="K2101/10")
    crossed = Characteristic("11", "Step", "mm", 5.0, 0.1, -0.1, 9, field="K2110/11")
    chunk = _build(
        [
            Reading(pos_a, part, 0.01, 20),
            Reading(pos_b, part, 0.02, 20),
            Reading(odd_unit, part, 1.2, 20),
            Reading(no_nominal, part, 0.0, 20),
            Reading(crossed, part, 5.0, 20),
            Reading(pos_a, Part("P2", timestamp=None, part_temp_c=20.0), 0.01, 21, field="K0001/7"),
            Reading(pos_a, Part("P3", timestamp=MOMENT, part_temp_c=20.0), math.inf, 22, field="K0001/7"),
        ]
    )
    assert chunk.rows.feature == ["Position_7", "Position_8"]
    reasons = [(e.line, e.column, e.reason) for e in chunk.errors]
    assert reasons == [
        (7, "unit", "unknown unit 'Ra' of characteristic 'Roughness'"),
        (8, "K2101/10", "characteristic 'Gap' has no nominal value"),
        (9, "K2110/11", "lower limit 0.1 above upper limit -0.1 of 'Step'"),
        (21, "K0001/7", "no date and time for this value"),
        (22, "K0001/7", "not a finite number: inf"),
    ]


def test_an_implausible_part_temperature_rejects_that_parts_values() -> None:
    length = Characteristic("1", "Length", "mm", 100.0, -0.01, 0.01, 5)
    temp = Characteristic("2", "Temperature", "°C", None, None, None, 6)
    bad, good = Part("P1", timestamp=MOMENT), Part("P2", timestamp=MOMENT)
    chunk = _build(
        [
            Reading(length, bad, 100.0, 10),
            Reading(temp, bad, 250.0, 11, field="K0001/2"),
            Reading(length, good, 100.0, 12),
            Reading(temp, good, 20.0, 13),
        ]
    )
    assert chunk.rows.part_id == ["P2"]
    assert [(e.line, e.column, e.reason) for e in chunk.errors] == [
        (10, "value", "its part's temperature is invalid (line 11)"),
        (11, "K0001/2 (Temperature)", "temperature 250.0 degC outside the plausible range -20..80 degC"),
    ]


def test_inputs_table_is_validated_at_start(tmp_path: Path) -> None:
    config_file = tmp_path / "gw.toml"
    config_file.write_text(
        '[inputs]\ntimezone = "Europe/Berlin"\nmachine_id = "CMM-07"\nmaterial = "ss304"\n'
        "assumed_temp_half_range_k = 3\n"
        '[inputs.parts."4711-A"]\nmaterial = "STEEL_1020"\nalready_compensated = true\n'
        '[outbox]\ndir = "out"\nformats = ["qif"]\n'
    )
    config = load_config(["--config", str(config_file)], {})
    assert config.inputs.machine_id == "CMM-07"
    assert config.default_material == "ss304"
    assert config.inputs.parts["4711-A"] == PartSettings("STEEL_1020", True)
    assert config.inputs.assumed_temp_u_k == pytest.approx(3.0 / math.sqrt(3.0))
    assert str(config.inputs.zone) == "Europe/Berlin"
    assert config.options["outbox"] == Path("out") and config.options["outbox_formats"] == ("qif",)
    local = config.inputs.local(datetime(2026, 7, 1, 12, 0))
    assert local.astimezone(UTC).hour == 10  # CEST is UTC+2


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[inputs.parts."4711-A"]\nmaterial = "unobtainium"\n', 'inputs.parts."4711-A".material'),
        ('[inputs]\ntimezone = "Mars/Olympus"\n', "inputs.timezone"),
        ("[inputs]\nassumed_temp_half_range_k = 0\n", "inputs.assumed_temp_half_range_k"),
        ('[inputs]\npart_temp_pattern = "("\n', "inputs.part_temp_pattern"),
        ("[inputs]\ncolour = 1\n", "inputs.colour"),
        ('[outbox]\nformats = ["pdf"]\n', "outbox_formats"),
        ("[outbox]\nfolder = 1\n", "outbox.folder"),
    ],
)
def test_bad_inputs_stop_the_start_naming_the_key(tmp_path: Path, table: str, key: str) -> None:
    config_file = tmp_path / "gw.toml"
    config_file.write_text(table)
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", str(config_file)], {})
    assert key in str(caught.value)
