"""Asymmetric, one-sided and missing specification zones, sources that already compensated,
assumed temperatures and angles through the physics (ISO 14253-1 zones, GUM budget), with
hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmm_twin.errors import PhysicsInputError
from cmm_twin.physics.compensation import Compensation
from cmm_twin.physics.decision import DecisionRule, Verdict, decide, decide_zones
from cmm_twin.physics.thermal import PhysicsConfig, evaluate

AL6061 = 23.6e-6
AL6061_U = 0.1 * AL6061 / math.sqrt(3)

# Hand-computed for L = 10 mm of AL6061 at 25 degC, u(T) = 0.2 K (GUM, first order), in um:
#   L*dT*u(a) = 10000 * 5 * 1.362546e-6 = 0.068127
#   L*a*u(T)  = 10000 * 23.6e-6 * 0.2   = 0.047200
#   u_cmm     = (1.5 + 10/333) / sqrt(3) = 0.883364
#   u_rep     = 0.5
#   u_c = sqrt(0.0046413 + 0.0022278 + 0.780332 + 0.25) = 1.018430, U = 2.036860
U_10MM_25C = 2.036860


def _measured_for(length_20c_mm: float, temp_c: float = 25.0) -> float:
    """The reading at `temp_c` of a part `length_20c_mm` long at 20 degC."""
    return length_20c_mm * (1.0 + AL6061 * (temp_c - 20.0))


def test_asymmetric_zone_verdicts_on_both_sides() -> None:
    """Zone [10 - 0.005, 10 + 0.015] mm: acceptance [-5 + U, 15 - U] = [-2.963, 12.963] um,
    rejection beyond [-7.037, 17.037] um."""
    deviations_um = [12.0, 14.0, 18.0, -2.0, -4.0, -8.0]
    measured = np.array([_measured_for(10.0 + d / 1000.0) for d in deviations_um])
    result = evaluate(
        measured,
        25.0,
        10.0,
        math.nan,
        AL6061,
        AL6061_U,
        lower_tol_mm=-0.005,
        upper_tol_mm=0.015,
    )
    assert result.uncertainty_um == pytest.approx(U_10MM_25C, abs=1e-4)  # L is the reading, 10 mm +- 18 um
    assert result.deviation_um == pytest.approx(deviations_um, abs=1e-6)
    assert [Verdict(v).name for v in result.verdict] == [
        "PASS",
        "UNCERTAIN",
        "FAIL",
        "PASS",
        "UNCERTAIN",
        "FAIL",
    ]


def test_zone_edges_computed_from_the_nominal() -> None:
    """Just inside and outside each edge of the acceptance and rejection zones (0.01 um apart)."""
    u = U_10MM_25C
    d = np.array([-5 + u + 0.01, -5 + u - 0.01, -5 - u + 0.01, -5 - u - 0.01, 15 - u - 0.01, 15 - u + 0.01])
    d = np.concatenate([d, [15 + u - 0.01, 15 + u + 0.01]])
    verdicts = decide_zones(d, -5.0, 15.0, u)
    expected = ["PASS", "UNCERTAIN", "UNCERTAIN", "FAIL", "PASS", "UNCERTAIN", "UNCERTAIN", "FAIL"]
    assert [Verdict(v).name for v in verdicts] == expected


def test_one_sided_and_undefined() -> None:
    """Upper limit only (a form tolerance): nothing below can fail; no limit at all: UNDEFINED,
    with the compensated value and U still given."""
    verdicts = decide_zones([-1000.0, 10.0, 14.0, 20.0, 5.0], np.nan, [15.0] * 4 + [np.nan], 2.0)
    assert [Verdict(v).name for v in verdicts] == ["PASS", "PASS", "UNCERTAIN", "FAIL", "UNDEFINED"]
    lower_only = decide_zones([-20.0, -14.0, 1000.0], -15.0, np.nan, 2.0)
    assert [Verdict(v).name for v in lower_only] == ["FAIL", "UNCERTAIN", "PASS"]
    result = evaluate(
        _measured_for(10.0), 25.0, 10.0, math.nan, AL6061, AL6061_U, lower_tol_mm=math.nan, upper_tol_mm=math.nan
    )
    assert Verdict(int(result.verdict)) is Verdict.UNDEFINED
    assert float(result.compensated_mm) == pytest.approx(10.0, abs=1e-12)
    assert float(result.uncertainty_um) == pytest.approx(U_10MM_25C, abs=1e-5)


def test_simple_rule_with_asymmetric_limits_and_symmetric_wrapper() -> None:
    simple = decide_zones([14.9, 15.1, -5.1], -5.0, 15.0, 2.0, DecisionRule.SIMPLE)
    assert [Verdict(v).name for v in simple] == ["PASS", "FAIL", "FAIL"]
    assert decide([7.0], 10.0, 2.0).tolist() == decide_zones([7.0], -10.0, 10.0, 2.0).tolist() == [Verdict.PASS]


def test_a_crossed_zone_is_an_input_error() -> None:
    with pytest.raises(PhysicsInputError, match="lower_tol_mm"):
        evaluate(10.0, 20.0, 10.0, math.nan, AL6061, AL6061_U, lower_tol_mm=0.01, upper_tol_mm=-0.01)


def test_source_compensated_values_are_not_corrected_twice() -> None:
    """The CMM software corrected already: the value is the result, U keeps the thermal terms
    at the recorded temperature (the same U as a value the gateway corrects)."""
    measured = np.array([_measured_for(10.0), 10.0])
    result = evaluate(
        measured,
        25.0,
        10.0,
        0.01,
        AL6061,
        AL6061_U,
        compensation=np.array([Compensation.GATEWAY, Compensation.SOURCE]),
    )
    assert result.compensated_mm.tolist() == pytest.approx([10.0, 10.0], abs=1e-12)
    assert result.correction_um[1] == 0.0
    assert result.uncertainty_um[0] == pytest.approx(result.uncertainty_um[1], rel=1e-5)  # L read vs L at 20 degC


def test_an_assumed_temperature_gives_the_larger_honest_uncertainty() -> None:
    """100 mm of AL6061, no temperature in the file: assumed 20 degC, u(T) = 2 K / sqrt(3) =
    1.154701 K. L*a*u(T) = 100000 * 23.6e-6 * 1.154701 = 2.725094 um; u_cmm = (1.5 + 100/333) /
    sqrt(3) = 1.039410; u_rep = 0.5: u_c = sqrt(7.426137 + 1.080373 + 0.25) = 2.959140, U = 5.918280.
    With the thermometer's 0.2 K: u_c = sqrt(0.222784 + 1.080373 + 0.25) = 1.246257, U = 2.492513."""
    result = evaluate(
        np.array([100.0, 100.0]),
        20.0,
        100.0,
        0.01,
        AL6061,
        AL6061_U,
        part_temp_u_k=np.array([2.0 / math.sqrt(3.0), math.nan]),
    )
    assert result.uncertainty_um.tolist() == pytest.approx([5.918280, 2.492513], abs=1e-5)
    assert result.correction_um.tolist() == [0.0, 0.0]


def test_angles_are_never_thermally_corrected() -> None:
    """An angle of 90.004 deg at 25 degC: delivered as read; u_c = angle_u_deg = 0.005 deg, so
    U = 0.010 deg = 10 thousandths of a degree; deviation 4 thousandths: PASS within +-0.05 deg."""
    result = evaluate(
        90.004,
        25.0,
        90.0,
        0.05,
        AL6061,
        AL6061_U,
        compensation=Compensation.NONE,
        config=PhysicsConfig(),
    )
    assert float(result.compensated_mm) == 90.004
    assert float(result.correction_um) == 0.0
    assert float(result.uncertainty_um) == pytest.approx(10.0)
    assert float(result.deviation_um) == pytest.approx(4.0, abs=1e-9)
    assert Verdict(int(result.verdict)) is Verdict.PASS


def test_signed_lengths_scale_like_the_part() -> None:
    """A coordinate of -50.0118 mm at 25 degC is -50.0118 / 1.000118 = -50.0059 mm at 20 degC;
    U uses |L|."""
    result = evaluate(-50.0118, 25.0, -50.0, 0.02, AL6061, AL6061_U)
    assert float(result.compensated_mm) == pytest.approx(-50.0118 / 1.000118, abs=1e-12)
    positive = evaluate(50.0118, 25.0, 50.0, 0.02, AL6061, AL6061_U)
    assert float(result.uncertainty_um) == pytest.approx(float(positive.uncertainty_um), rel=1e-12)
