"""Issue 13's defects, by hand: readings on every zone boundary computed from the nominal, the
uncertainty of an assumed scale temperature, the gradient of a part not soaked, and the MPE of
each machine."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.config import load_config
from cmm_twin.physics import Verdict, evaluate, lookup_material
from cmm_twin.physics.thermal import DecisionRule, PhysicsConfig, UncertaintyInputs

AL = lookup_material("AL6061")
STEEL = lookup_material("STEEL_1020")
NM_MM = 1e-6
"""1 nm in mm: the decision's default resolution."""


CONSTANT_U = UncertaintyInputs(part_temp_u_k=0.0, cmm_mpe_k_mm_per_um=1e15)
"""A budget whose U does not depend on the reading (no thermometer term, E0 = A): U = 2 *
sqrt(1.5^2 / 3 + 0.5^2) = 2 um exactly, so a boundary reading can be placed from the nominal."""


def _verdicts(measured_mm: np.ndarray, nominal_mm: np.ndarray, lower_mm: np.ndarray, upper_mm: np.ndarray,
              rule: DecisionRule) -> np.ndarray:  # fmt: skip
    result = evaluate(
        measured_mm, 20.0, nominal_mm, math.nan, AL.cte_per_k, AL.cte_u_per_k,
        config=PhysicsConfig(uncertainty=CONSTANT_U, rule=rule), lower_tol_mm=lower_mm, upper_tol_mm=upper_mm,
    )  # fmt: skip
    return result.verdict


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Nominals 1..500 mm (every 0.5 mm and some odd ones) x tolerances 5..50 um."""
    nominals = np.concatenate([np.arange(1.0, 500.5, 0.5), [3.3, 17.77, 99.99, 123.456, 333.3]])
    tolerances_mm = np.arange(5, 51) / 1000.0
    n, t = np.meshgrid(nominals, tolerances_mm)
    return n.ravel(), t.ravel()


def test_simple_rule_readings_on_the_limits_pass_and_one_nm_beyond_fail() -> None:
    nominal, tol = _grid()
    for sign in (1.0, -1.0):
        limit = nominal + sign * tol  # the reading exactly on the limit, as a CMM reports it
        lower, upper = -tol, tol
        on = _verdicts(limit, nominal, lower, upper, DecisionRule.SIMPLE)
        inside = _verdicts(limit - sign * NM_MM, nominal, lower, upper, DecisionRule.SIMPLE)
        outside = _verdicts(limit + sign * NM_MM, nominal, lower, upper, DecisionRule.SIMPLE)
        assert (on == Verdict.PASS).all(), f"{np.count_nonzero(on != Verdict.PASS)} of {on.size} on-limit FAILs"
        assert (inside == Verdict.PASS).all()
        assert (outside == Verdict.FAIL).all()


def test_the_audit_case_passes_under_the_simple_rule() -> None:
    result = evaluate(
        [100.01], 20.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, config=PhysicsConfig(rule=DecisionRule.SIMPLE)
    )
    assert result.deviation_um[0] != 10.0  # (100.01 - 100) * 1000 is 10.000000000005116 in float64
    assert Verdict(int(result.verdict[0])) is Verdict.PASS


def test_guard_banded_boundaries_from_the_nominal_on_both_sides_of_asymmetric_zones() -> None:
    """Readings on, 1 nm inside and 1 nm outside the acceptance limits (limit -+ U) and the
    rejection limits (limit +- U), for a zone -5 / +15 um over nominals 1..500 mm."""
    nominal = np.concatenate([np.arange(1.0, 500.5, 1.0), [99.99, 123.456]])
    lower_mm, upper_mm = np.full_like(nominal, -0.005), np.full_like(nominal, 0.015)
    u_mm = 0.002  # CONSTANT_U
    cases = [  # (boundary reading, direction "outward" in mm, verdict on/inside, verdict outside)
        (nominal + upper_mm - u_mm, +1.0, Verdict.PASS, Verdict.UNCERTAIN),
        (nominal + lower_mm + u_mm, -1.0, Verdict.PASS, Verdict.UNCERTAIN),
        (nominal + upper_mm + u_mm, +1.0, Verdict.UNCERTAIN, Verdict.FAIL),
        (nominal + lower_mm - u_mm, -1.0, Verdict.UNCERTAIN, Verdict.FAIL),
    ]
    for reading, outward, on_verdict, out_verdict in cases:
        on = _verdicts(reading, nominal, lower_mm, upper_mm, DecisionRule.GUARD_BANDED)
        inside = _verdicts(reading - outward * NM_MM, nominal, lower_mm, upper_mm, DecisionRule.GUARD_BANDED)
        outside = _verdicts(reading + outward * NM_MM, nominal, lower_mm, upper_mm, DecisionRule.GUARD_BANDED)
        assert (on == on_verdict).all() and (inside == on_verdict).all()
        assert (outside == out_verdict).all()


def test_the_constant_budget_is_2_um() -> None:
    result = evaluate([1.0, 500.0], 20.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, config=PhysicsConfig(CONSTANT_U))
    assert result.uncertainty_um == pytest.approx([2.0, 2.0], abs=1e-9)


def test_one_sided_limits_on_the_limit_pass_under_the_simple_rule() -> None:
    nominal, tol = _grid()
    nan = np.full_like(nominal, math.nan)
    assert (_verdicts(nominal + tol, nominal, nan, tol, DecisionRule.SIMPLE) == Verdict.PASS).all()
    assert (_verdicts(nominal - tol, nominal, -tol, nan, DecisionRule.SIMPLE) == Verdict.PASS).all()


def test_resolution_is_configurable_and_checked() -> None:
    coarse = PhysicsConfig(rule=DecisionRule.SIMPLE, decision_resolution_um=0.1)
    result = evaluate([100.01004], 20.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, config=coarse)
    assert Verdict(int(result.verdict[0])) is Verdict.PASS  # +10.04 um is +10.0 at 0.1 um
    with pytest.raises(ConfigError, match="decision_resolution_um"):
        PhysicsConfig(decision_resolution_um=0.0)


def test_an_assumed_scale_temperature_carries_the_uncertainty_of_the_assumption() -> None:
    """The audit case: 100.01678 mm at 25 degC, steel scale without a reading. Shop range 22 +- 4 K."""
    config = PhysicsConfig(
        scale_cte_per_k=STEEL.cte_per_k,
        scale_cte_u_per_k=STEEL.cte_u_per_k,
        assumed_temp_c=22.0,
        assumed_temp_half_range_k=4.0,
    )
    result = evaluate([100.01678], 25.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, config=config)
    l_um = 100.01678 * 1000.0
    compensated = 100.01678 * (1 + STEEL.cte_per_k * 2.0) / (1 + AL.cte_per_k * 5.0)
    variance = (
        (l_um * 5.0 * AL.cte_u_per_k) ** 2
        + (l_um * AL.cte_per_k * 0.2) ** 2
        + (1.5 + 100.01678 / 333.0) ** 2 / 3.0
        + 0.5**2
        + (l_um * 2.0 * STEEL.cte_u_per_k) ** 2
        + (l_um * STEEL.cte_per_k * 4.0 / math.sqrt(3.0)) ** 2  # u(T_s) = 2.309 K, not 0.2 K
    )
    assert result.compensated_mm[0] == pytest.approx(compensated, abs=1e-12)
    assert result.uncertainty_um[0] == pytest.approx(2.0 * math.sqrt(variance), abs=1e-9)
    assert result.uncertainty_um[0] == pytest.approx(6.11, abs=0.01)
    # The scale really at 26 degC makes the part 12 um long: it must not PASS.
    true_deviation_um = (100.01678 * (1 + STEEL.cte_per_k * 6.0) / (1 + AL.cte_per_k * 5.0) - 100.0) * 1000
    assert true_deviation_um == pytest.approx(12.0, abs=0.01)
    assert Verdict(int(result.verdict[0])) is Verdict.UNCERTAIN
    measured = evaluate([100.01678], 25.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, scale_temp_c=26.0, config=config)
    # With its thermometer (u = 0.2 K): +12.0 um lies below 10 + U = 12.99 um, UNCERTAIN too.
    assert measured.uncertainty_um[0] == pytest.approx(2.99, abs=0.01)
    assert Verdict(int(measured.verdict[0])) is Verdict.UNCERTAIN


def test_gradient_term_grows_with_the_part_to_air_difference() -> None:
    """u(T)^2 = 0.2^2 + (0.2 * |T_part - T_air|)^2 / 3 (rectangular half-width f * |dT|)."""
    air = np.array([math.nan, 25.0, 24.0, 19.0])
    result = evaluate(100.0, 25.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, air_temp_c=air)
    l_um = 100_000.0
    fixed = (l_um * 5.0 * AL.cte_u_per_k) ** 2 + (1.5 + 100 / 333.0) ** 2 / 3.0 + 0.25
    expected = [
        2.0 * math.sqrt(fixed + (l_um * AL.cte_per_k) ** 2 * (0.04 + (0.2 * dt) ** 2 / 3.0))
        for dt in (0.0, 0.0, 1.0, 6.0)
    ]
    assert result.uncertainty_um == pytest.approx(expected, abs=1e-9)
    assert result.uncertainty_um[0] == pytest.approx(2.8406, abs=1e-4)  # the design's check value, no air
    # A reading that PASSes when soaked is UNCERTAIN 6 K above the air: deviation +6.5 um, U 2.84 -> 4.33 um.
    soaked = evaluate([100.018301], 25.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, air_temp_c=25.0)
    warm = evaluate([100.018301], 25.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, air_temp_c=19.0)
    assert Verdict(int(soaked.verdict[0])) is Verdict.PASS
    assert Verdict(int(warm.verdict[0])) is Verdict.UNCERTAIN
    off = PhysicsConfig(uncertainty=UncertaintyInputs(gradient_factor=0.0))
    unchanged = evaluate([100.0], 25.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, air_temp_c=19.0, config=off)
    assert unchanged.uncertainty_um[0] == pytest.approx(2.8406, abs=1e-4)


def test_each_machine_has_its_own_mpe() -> None:
    config = PhysicsConfig(machine_mpe={"CMM-02": (3.0, 200.0)})
    result = evaluate(
        [100.0, 100.0], 20.0, 100.0, 0.01, AL.cte_per_k, AL.cte_u_per_k, config=config,
        machine_id=["CMM-01", "CMM-02"],
    )  # fmt: skip
    rest = (100_000.0 * AL.cte_per_k * 0.2) ** 2 + 0.25
    assert result.uncertainty_um[0] == pytest.approx(2 * math.sqrt(rest + (1.5 + 100 / 333) ** 2 / 3), abs=1e-9)
    assert result.uncertainty_um[1] == pytest.approx(2 * math.sqrt(rest + (3.0 + 100 / 200) ** 2 / 3), abs=1e-9)


def _config(tmp_path: Path, text: str) -> PhysicsConfig:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_config(["--data", str(tmp_path / "data"), "--config", str(path)], {}).physics


def test_configuration_of_machines_assumption_and_resolution(tmp_path: Path) -> None:
    physics = _config(
        tmp_path,
        "[physics]\ncmm_mpe_a_um = 2.0\ndecision_resolution_um = 0.01\ngradient_factor = 0.3\n"
        "[inputs]\nassumed_temp_c = 22.0\nassumed_temp_half_range_k = 4.0\n"
        '[machines."CMM-07"]\ncmm_mpe_k_mm_per_um = 250\n',
    )
    assert physics.machine_mpe == {"CMM-07": (2.0, 250.0)}  # A from [physics]
    assert physics.decision_resolution_um == 0.01
    assert physics.uncertainty.gradient_factor == 0.3
    assert (physics.assumed_temp_c, physics.assumed_temp_half_range_k) == (22.0, 4.0)
    with pytest.raises(ConfigError, match=r'machines\."CMM-07"\.cmm_mpe_b'):
        _config(tmp_path, '[machines."CMM-07"]\ncmm_mpe_b = 1\n')
    with pytest.raises(ConfigError, match=r"cmm_mpe_k_mm_per_um"):
        _config(tmp_path, '[machines."CMM-07"]\ncmm_mpe_k_mm_per_um = 0\n')
    with pytest.raises(ConfigError, match=r'machines\."CMM-07"\.cmm_mpe_a_um'):
        _config(tmp_path, '[machines."CMM-07"]\ncmm_mpe_a_um = "big"\n')
