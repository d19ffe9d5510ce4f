"""Physics against hand-computed values (README, "The physics, by hand")."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmm_twin.errors import ConfigError, PhysicsInputError, UnknownMaterialError
from cmm_twin.physics import (
    MATERIALS,
    VERDICT_NAMES,
    DecisionRule,
    Flag,
    PhysicsConfig,
    ThermalLimits,
    UncertaintyInputs,
    Verdict,
    compensate_linear,
    compensate_to_20c,
    decide,
    evaluate,
    expand_from_20c,
    flag_names,
    implausible_results,
    lookup_material,
    materials_with_overrides,
    standard_uncertainty_um,
)
from cmm_twin.records import measurement_id

AL6061 = 23.6e-6
STEEL = 11.7e-6


def test_warm_aluminium_part_is_compensated_exactly() -> None:
    # 100 mm of AL6061 at 25 degC reads 100 * (1 + 23.6e-6 * 5) = 100.0118 mm.
    assert compensate_to_20c(100.0118, 25.0, AL6061) == pytest.approx(100.0, abs=1e-12)


def test_cold_steel_part_is_compensated_exactly() -> None:
    # 99.99 / (1 + 11.7e-6 * (15 - 20)) = 99.99 / 0.9999415 = 99.99584975721...
    assert compensate_to_20c(99.99, 15.0, STEEL) == pytest.approx(99.99584975721, abs=1e-10)


def test_exact_form_differs_from_linear_by_second_order_term() -> None:
    # Linear: 100.0118 * (1 - 118e-6) = 100.0118 - 0.0118013924 = 99.9999986076; exact: 100.0;
    # the gap 1.3924e-6 mm is L * (a*dT)^2 = 100 * (118e-6)^2.
    exact = compensate_to_20c(100.0118, 25.0, AL6061)
    linear = compensate_linear(100.0118, 25.0, AL6061)
    assert linear == pytest.approx(99.9999986076, abs=1e-12)
    assert float(exact - linear) == pytest.approx(100.0 * (AL6061 * 5.0) ** 2, rel=1e-3)


def test_differential_case_with_a_steel_scale() -> None:
    # Scale at 22 degC expands by 11.7e-6 * 2: L20 = 100.0118 * 1.0000234 / 1.000118 = 100.00234 mm.
    result = compensate_to_20c(100.0118, 25.0, AL6061, scale_temp_c=22.0, scale_cte_per_k=STEEL)
    assert result == pytest.approx(100.00234, abs=1e-12)
    # Part and scale of the same CTE at the same temperature need no correction.
    assert compensate_to_20c(50.0, 27.0, STEEL, 27.0, STEEL) == pytest.approx(50.0, abs=1e-12)


def test_uncertainty_check_value_from_design() -> None:
    # L = 100 mm, AL6061, T = 25 degC:
    # (L dT u(a))^2 = (100e3 * 5 * 0.1 * 23.6e-6 / sqrt 3)^2 = 0.464133
    # (L a u(T))^2  = (100e3 * 23.6e-6 * 0.2)^2               = 0.222784
    # u_cmm^2       = ((1.5 + 100/333) / sqrt 3)^2             = 1.080360
    # u_rep^2       = 0.25;  u_c = sqrt(2.017278) = 1.420309
    material = lookup_material("AL6061")
    u_c = standard_uncertainty_um(100.0, 25.0, material.cte_per_k, material.cte_u_per_k, UncertaintyInputs())
    assert u_c == pytest.approx(1.420309, abs=1e-6)
    result = evaluate(100.0118, 25.0, 100.0, 0.010, material.cte_per_k, material.cte_u_per_k)
    assert result.standard_uncertainty_um == pytest.approx(1.42, abs=0.005)
    assert result.uncertainty_um == pytest.approx(2.84, abs=0.01)


def test_uncertainty_at_20c_has_no_cte_term_and_scale_terms_add() -> None:
    inputs = UncertaintyInputs()
    at_20 = standard_uncertainty_um(100.0, 20.0, AL6061, AL6061 * 0.1 / math.sqrt(3), inputs)
    assert at_20 == pytest.approx(math.sqrt(0.222784 + 1.0803603904 + 0.25), abs=1e-6)
    # Steel scale at 25 degC: + (100e3 * 5 * u(a_s))^2 + (100e3 * 11.7e-6 * 0.2)^2
    u_scale = STEEL * 0.1 / math.sqrt(3)
    with_scale = standard_uncertainty_um(100.0, 20.0, AL6061, AL6061 * 0.1 / math.sqrt(3), inputs, 25.0, STEEL, u_scale)
    extra = (1e5 * 5 * u_scale) ** 2 + (1e5 * STEEL * 0.2) ** 2
    assert with_scale == pytest.approx(math.sqrt(float(at_20) ** 2 + extra), abs=1e-9)


@pytest.mark.parametrize(
    ("deviation_um", "expected"),
    [
        (0.0, Verdict.PASS),
        (8.0, Verdict.PASS),  # |d| = tol - U: still PASS
        (-8.0, Verdict.PASS),
        (8.001, Verdict.UNCERTAIN),
        (-8.001, Verdict.UNCERTAIN),
        (12.0, Verdict.UNCERTAIN),  # |d| = tol + U: not yet FAIL
        (-12.0, Verdict.UNCERTAIN),
        (12.001, Verdict.FAIL),
        (-12.001, Verdict.FAIL),
    ],
)
def test_guard_banded_decision_boundaries(deviation_um: float, expected: Verdict) -> None:
    assert decide(deviation_um, 10.0, 2.0) == expected


def test_simple_rule_boundaries_and_vectorised_names() -> None:
    codes = decide([10.0, -10.0, 10.001, -10.001, 0.0], 10.0, 2.0, DecisionRule.SIMPLE)
    assert list(VERDICT_NAMES[codes]) == ["PASS", "PASS", "FAIL", "FAIL", "PASS"]


def test_uncertainty_larger_than_tolerance_never_passes() -> None:
    assert decide(0.0, 2.0, 3.0) == Verdict.UNCERTAIN


def test_flags_rated_range_and_soak() -> None:
    result = evaluate(
        [100.0, 100.0, 100.0, 100.0],
        [20.0, 31.0, 24.0, 12.0],
        100.0,
        0.01,
        AL6061,
        0.0,
        air_temp_c=[20.5, 30.0, 21.0, math.nan],
    )
    assert [flag_names(int(m)) for m in result.flags] == [
        [],
        ["part_temp_out_of_rated_range"],
        ["part_not_soaked"],
        ["part_temp_out_of_rated_range"],
    ]


def test_scale_cte_without_scale_temperature_is_flagged() -> None:
    config = PhysicsConfig(scale_cte_per_k=STEEL)
    result = evaluate([100.0, 100.0], 20.0, 100.0, 0.01, AL6061, 0.0, scale_temp_c=[math.nan, 21.0], config=config)
    assert result.flags[0] & Flag.SCALE_TEMP_ASSUMED_20C
    assert not result.flags[1] & Flag.SCALE_TEMP_ASSUMED_20C
    assert result.compensated_mm[0] == pytest.approx(100.0, abs=1e-12)
    assert result.compensated_mm[1] == pytest.approx(100.0 * (1 + STEEL), abs=1e-12)


def test_evaluate_vectorised_matches_row_by_row() -> None:
    rng = np.random.default_rng(7)
    n = 50
    measured = 100.0 + rng.normal(0, 0.01, n)
    temp = rng.uniform(15, 28, n)
    air = temp + rng.normal(0, 1, n)
    batch = evaluate(measured, temp, 100.0, 0.01, AL6061, AL6061 * 0.0577, air_temp_c=air)
    for i in range(n):
        one = evaluate(measured[i], temp[i], 100.0, 0.01, AL6061, AL6061 * 0.0577, air_temp_c=air[i])
        assert batch.compensated_mm[i] == one.compensated_mm
        assert batch.uncertainty_um[i] == one.uncertainty_um
        assert batch.verdict[i] == one.verdict
        assert batch.flags[i] == one.flags
    assert batch.correction_um == pytest.approx((batch.compensated_mm - measured) * 1000)


@pytest.mark.parametrize(
    ("kwargs", "field", "index"),
    [
        ({"measured_mm": [100.0, math.nan]}, "measured_mm", 1),
        ({"measured_mm": [math.inf, 100.0]}, "measured_mm", 0),
        ({"measured_mm": [100.0, -1e5]}, "measured_mm", 1),
        ({"nominal_mm": [100.0, math.nan]}, "nominal_mm", 1),
        ({"tolerance_mm": [-0.01, 0.01]}, "tolerance_mm", 0),
        ({"part_temp_c": [20.0, 150.0]}, "part_temp_c", 1),
        ({"part_temp_c": [-40.0, 20.0]}, "part_temp_c", 0),
        ({"part_temp_c": [20.0, math.nan]}, "part_temp_c", 1),
        ({"air_temp_c": [20.0, math.inf]}, "air_temp_c", 1),
        ({"air_temp_c": [500.0, 20.0]}, "air_temp_c", 0),
    ],
)
def test_bad_inputs_raise_typed_error_naming_field_and_row(
    kwargs: dict[str, list[float]], field: str, index: int
) -> None:
    args: dict[str, object] = {
        "measured_mm": [100.0, 100.0],
        "part_temp_c": [20.0, 20.0],
        "nominal_mm": 100.0,
        "tolerance_mm": 0.01,
        "cte_per_k": AL6061,
        "cte_u_per_k": 0.0,
        **kwargs,
    }
    with pytest.raises(PhysicsInputError) as caught:
        evaluate(**args)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert caught.value.index == index
    assert field in str(caught.value)


def test_plausible_range_is_configurable() -> None:
    config = PhysicsConfig(limits=ThermalLimits(plausible_min_c=10.0, plausible_max_c=40.0))
    with pytest.raises(PhysicsInputError, match=r"plausible range 10\.\.40"):
        evaluate(100.0, 45.0, 100.0, 0.01, AL6061, 0.0, config=config)


def test_bad_configuration_names_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        UncertaintyInputs(part_temp_u_k=-0.1)
    assert caught.value.key == "part_temp_u_k"
    with pytest.raises(ConfigError, match="rated_min_c"):
        ThermalLimits(rated_min_c=30.0, rated_max_c=20.0)


def test_materials_table_has_the_required_values_with_sources() -> None:
    expected = {
        "AL6061": 23.6,
        "AL7075": 23.4,
        "STEEL_1020": 11.7,
        "SS304": 17.2,
        "INVAR36": 1.3,
        "BRASS_C360": 20.5,
        "TI6AL4V": 8.6,
    }
    for key, cte_e6 in expected.items():
        material = MATERIALS[key]
        assert material.cte_per_k == pytest.approx(cte_e6 * 1e-6)
        assert material.source
        assert material.cte_u_per_k == pytest.approx(0.1 * material.cte_per_k / math.sqrt(3))
    assert lookup_material(" al6061 ").key == "AL6061"
    with pytest.raises(UnknownMaterialError, match="unobtainium"):
        lookup_material("unobtainium")


def test_materials_extend_by_configuration() -> None:
    table = materials_with_overrides({"cu_etp": {"cte_per_k": 16.9e-6, "source": "CDA C11000"}})
    assert table["CU_ETP"].cte_per_k == 16.9e-6
    assert lookup_material("cu_etp", table).source == "CDA C11000"
    with pytest.raises(ConfigError) as caught:
        materials_with_overrides({"X": {"cte_per_k": "big", "source": "s"}})
    assert caught.value.key == "materials.X.cte_per_k"
    with pytest.raises(ConfigError, match=r"materials\.Y\.source"):
        materials_with_overrides({"Y": {"cte_per_k": 1e-5}})


@settings(max_examples=300, deadline=None)
@given(
    length_mm=st.floats(0.1, 2000.0),
    part_temp_c=st.floats(-20.0, 80.0),
    cte_per_k=st.floats(0.0, 30e-6),
    scale_temp_c=st.floats(-20.0, 80.0),
    scale_cte_per_k=st.sampled_from([0.0, 11.7e-6, 0.5e-6]),
)
def test_compensation_inverts_the_expansion_the_simulator_applies(
    length_mm: float, part_temp_c: float, cte_per_k: float, scale_temp_c: float, scale_cte_per_k: float
) -> None:
    measured = expand_from_20c(length_mm, part_temp_c, cte_per_k, scale_temp_c, scale_cte_per_k)
    back = compensate_to_20c(measured, part_temp_c, cte_per_k, scale_temp_c, scale_cte_per_k)
    assert back == pytest.approx(length_mm, rel=1e-13, abs=1e-12)


def test_measurement_id_is_stable_across_timestamp_spellings() -> None:
    moment = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    same = moment.astimezone(timezone(timedelta(hours=2)))
    assert measurement_id("CMM-01", "P1", "length_x", moment) == measurement_id("CMM-01", "P1", "length_x", same)
    assert measurement_id("CMM-01", "P1", "length_x", moment) != measurement_id("CMM-01", "P1", "length_y", moment)


def test_lengths_above_the_limit_are_input_errors_and_results_are_checked() -> None:
    """Hand-computed: 9999.9 mm of AL6061 at -20 degC is 9999.9 / (1 - 23.6e-6 * 40)
    = 9999.9 / 0.999056 = 10009.3488 mm at 20 degC, above the 10 m limit; 100.0118 mm at 25 degC
    is 100.0118 / 1.000118 = 100.0000 mm."""
    with pytest.raises(PhysicsInputError, match=r"measured_mm\[1\]: must be within \+-10000 mm") as caught:
        evaluate([100.0, 1.7e308], 19.0, 100.0, 0.01, AL6061, 0.0)
    assert caught.value.index == 1
    with pytest.raises(PhysicsInputError, match="nominal_mm"):
        evaluate(100.0, 19.0, 1e308, 0.01, AL6061, 0.0)
    result = evaluate(np.array([9999.9, 100.0118]), np.array([-20.0, 25.0]), 100.0, 0.01, AL6061, 0.0)
    assert result.compensated_mm[0] == pytest.approx(10009.3488253, abs=1e-6)
    assert result.compensated_mm[1] == pytest.approx(100.0, abs=1e-9)
    mask = implausible_results(ThermalLimits(), result.compensated_mm, result.deviation_um, result.uncertainty_um)
    assert mask.tolist() == [True, False]
    assert implausible_results(ThermalLimits(max_length_mm=20_000.0), result.compensated_mm).tolist() == [False, False]
    overflowed = implausible_results(ThermalLimits(), np.array([100.0, 100.0, np.nan]), np.array([np.inf, 1.0, 1.0]))
    assert overflowed.tolist() == [True, False, True]
    with pytest.raises(ConfigError, match="max_length_mm"):
        ThermalLimits(max_length_mm=0.0)
