"""Try the physics by hand on one measurement.

    python -m cmm_twin.physics --measured 100.0118 --temp 25 --material AL6061 --nominal 100 --tol 0.01

prints the compensated length, correction, uncertainty and verdict; `--json` prints one JSON object
with the result-record field names (`cmm_twin/records.py` `RESULT_FIELDS`). Bad values exit 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

import numpy as np

from cmm_twin.errors import CmmTwinError
from cmm_twin.physics.materials import MATERIALS, lookup_material
from cmm_twin.physics.thermal import (
    VERDICT_NAMES,
    DecisionRule,
    PhysicsConfig,
    UncertaintyInputs,
    evaluate,
    flag_names,
)
from cmm_twin.records import RESULT_FIELDS, canonical_timestamp, measurement_id

PROG = "python -m cmm_twin.physics"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of the physics tool."""
    parser = _Parser(prog=PROG, description="Compensate one CMM reading to 20 degC and decide (ISO 14253-1).")
    parser.add_argument("--measured", type=float, required=True, metavar="MM", help="raw CMM reading, mm")
    parser.add_argument("--temp", type=float, required=True, metavar="DEGC", help="part temperature, degC")
    parser.add_argument("--material", default="AL6061", help=f"one of {', '.join(MATERIALS)} (default AL6061)")
    parser.add_argument("--nominal", type=float, required=True, metavar="MM", help="nominal size, mm")
    parser.add_argument("--tol", type=float, metavar="MM", help="symmetric tolerance +-, mm")
    parser.add_argument(
        "--lower-tol",
        type=float,
        metavar="MM",
        help="lower limit relative to the nominal, signed mm (instead of --tol; omit for an upper limit only)",
    )
    parser.add_argument(
        "--upper-tol",
        type=float,
        metavar="MM",
        help="upper limit relative to the nominal, signed mm (instead of --tol; omit for a lower limit only)",
    )
    parser.add_argument("--air-temp", type=float, metavar="DEGC", help="air temperature near the part, degC")
    parser.add_argument("--scale-temp", type=float, metavar="DEGC", help="CMM scale temperature, degC")
    parser.add_argument("--scale-material", metavar="KEY", help="material of the CMM scale (enables scale expansion)")
    parser.add_argument("--rule", choices=[r.value for r in DecisionRule], default=DecisionRule.GUARD_BANDED.value)
    defaults = UncertaintyInputs()
    parser.add_argument(
        "--temp-u",
        type=float,
        default=defaults.part_temp_u_k,
        metavar="K",
        help=f"standard uncertainty of the part thermometer, K (default {defaults.part_temp_u_k})",
    )
    parser.add_argument(
        "--repeatability-um",
        type=float,
        default=defaults.repeatability_um,
        metavar="UM",
        help=f"probing repeatability (standard uncertainty), um (default {defaults.repeatability_um})",
    )
    parser.add_argument(
        "--mpe-a-um",
        type=float,
        default=defaults.cmm_mpe_a_um,
        metavar="UM",
        help=f"CMM MPE E0 = A + L/K: A in um (default {defaults.cmm_mpe_a_um})",
    )
    parser.add_argument(
        "--mpe-k",
        type=float,
        default=defaults.cmm_mpe_k_mm_per_um,
        metavar="MM/UM",
        help=f"CMM MPE E0 = A + L/K: K (default {defaults.cmm_mpe_k_mm_per_um:g})",
    )
    config_defaults = PhysicsConfig()
    parser.add_argument(
        "--assumed-temp",
        type=float,
        default=config_defaults.assumed_temp_c,
        metavar="DEGC",
        help="temperature a scale without --scale-temp is assumed at, degC (default %(default)s)",
    )
    parser.add_argument(
        "--assumed-half-range",
        type=float,
        default=config_defaults.assumed_temp_half_range_k,
        metavar="K",
        help="half-width of the shop's temperature range an assumed temperature stands for:"
        " u = half-range / sqrt(3), K (default %(default)s)",
    )
    parser.add_argument(
        "--gradient-factor",
        type=float,
        default=defaults.gradient_factor,
        metavar="F",
        help="with --air-temp, the part's mean temperature lies within +-F*|part - air| of its reading"
        " (default %(default)s; 0: off)",
    )
    parser.add_argument(
        "--resolution-um",
        type=float,
        default=config_defaults.decision_resolution_um,
        metavar="UM",
        help="resolution the decision is taken at, um (default %(default)s: 1 nm)",
    )
    parser.add_argument("--machine-id", help="identity fields, for measurement_id in --json")
    parser.add_argument("--part-id")
    parser.add_argument("--feature")
    parser.add_argument("--timestamp", help="ISO 8601 with offset")
    parser.add_argument("--json", action="store_true", help="print one JSON result record")
    return parser


def compute_record(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the arguments and return a result record (the names of `RESULT_FIELDS`)."""
    material = lookup_material(args.material)
    scale = lookup_material(args.scale_material) if args.scale_material else None
    config = PhysicsConfig(
        uncertainty=UncertaintyInputs(
            part_temp_u_k=args.temp_u,
            scale_temp_u_k=args.temp_u,
            cmm_mpe_a_um=args.mpe_a_um,
            cmm_mpe_k_mm_per_um=args.mpe_k,
            repeatability_um=args.repeatability_um,
            gradient_factor=args.gradient_factor,
        ),
        rule=DecisionRule(args.rule),
        scale_cte_per_k=scale.cte_per_k if scale else 0.0,
        scale_cte_u_per_k=scale.cte_u_per_k if scale else 0.0,
        assumed_temp_c=args.assumed_temp,
        assumed_temp_half_range_k=args.assumed_half_range,
        decision_resolution_um=args.resolution_um,
    )
    lower_mm = upper_mm = None
    if args.tol is None:  # an asymmetric or one-sided zone (main() checks that one side is given)
        lower_mm = math.nan if args.lower_tol is None else args.lower_tol
        upper_mm = math.nan if args.upper_tol is None else args.upper_tol
    result = evaluate(
        args.measured,
        args.temp,
        args.nominal,
        math.nan if args.tol is None else args.tol,
        material.cte_per_k,
        material.cte_u_per_k,
        air_temp_c=math.nan if args.air_temp is None else args.air_temp,
        scale_temp_c=math.nan if args.scale_temp is None else args.scale_temp,
        config=config,
        lower_tol_mm=lower_mm,
        upper_tol_mm=upper_mm,
    )
    lower = -args.tol if args.tol is not None else args.lower_tol
    upper = args.tol if args.tol is not None else args.upper_tol
    identity = (args.machine_id, args.part_id, args.feature, args.timestamp)
    record_id = timestamp = None
    if all(v is not None for v in identity):
        moment = _parse_timestamp(args.timestamp)
        timestamp = canonical_timestamp(moment)
        record_id = measurement_id(args.machine_id, args.part_id, args.feature, moment)
    record: dict[str, Any] = {
        "measurement_id": record_id,
        "timestamp": timestamp,
        "machine_id": args.machine_id,
        "part_id": args.part_id,
        "feature": args.feature,
        "material": material.key,
        "cte_per_k": material.cte_per_k,
        "nominal_mm": args.nominal,
        "tolerance_mm": args.tol,
        "lower_tol_mm": lower,
        "upper_tol_mm": upper,
        "measured_mm": args.measured,
        "part_temp_c": args.temp,
        "air_temp_c": args.air_temp,
        "scale_temp_c": args.scale_temp,
        "compensated_mm": _rounded(result.compensated_mm, 7),
        "correction_um": _rounded(result.correction_um, 4),
        "deviation_um": _rounded(result.deviation_um, 4),
        "uncertainty_um": _rounded(result.uncertainty_um, 4),
        "verdict": str(VERDICT_NAMES[int(result.verdict)]),
        "flags": flag_names(int(result.flags)),
        "unit": "mm",
        "compensation": "gateway",
        "source_format": None,
        "source_file": None,
    }
    assert tuple(record) == RESULT_FIELDS
    return record


def _zone_text(record: dict[str, Any]) -> str:
    """The specification as the text output states it, in um."""
    if record["tolerance_mm"] is not None:
        return f"+-{record['tolerance_mm'] * 1000:.1f} um"
    sides = [
        f"{name} {value * 1000:+.1f} um"
        for name, value in (("lower", record["lower_tol_mm"]), ("upper", record["upper_tol_mm"]))
        if value is not None
    ]
    return ", ".join(sides)


def _rounded(value: np.floating[Any] | np.ndarray[Any, Any], digits: int) -> float:
    return round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0


def _parse_timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CmmTwinError(f"--timestamp: not ISO 8601: {text!r}") from None
    if moment.tzinfo is None:
        raise CmmTwinError(f"--timestamp: needs an offset (Z or +00:00): {text!r}")
    return moment


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tol is not None and (args.lower_tol is not None or args.upper_tol is not None):
        parser.error("--tol: give either --tol or --lower-tol/--upper-tol")
    if args.tol is None and args.lower_tol is None and args.upper_tol is None:
        parser.error("--tol: required (or --lower-tol and/or --upper-tol)")
    if args.machine_id is not None or args.part_id is not None or args.feature is not None or args.timestamp:
        missing = [f for f in ("machine_id", "part_id", "feature", "timestamp") if getattr(args, f) is None]
        if missing:
            parser.error(f"--{missing[0].replace('_', '-')}: needed with the other identity fields")
    try:
        record = compute_record(args)
    except CmmTwinError as exc:
        print(f"{PROG}: error: {_flag_for(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(record))
        return 0
    print(f"material        {record['material']} (CTE {record['cte_per_k'] * 1e6:.1f}e-6/K)")
    print(f"measured        {record['measured_mm']:.5f} mm at {record['part_temp_c']:.2f} degC")
    print(f"compensated     {record['compensated_mm']:.5f} mm at 20 degC")
    print(f"correction      {record['correction_um']:+.2f} um")
    print(f"deviation       {record['deviation_um']:+.2f} um (tolerance {_zone_text(record)})")
    print(f"uncertainty     U = {record['uncertainty_um']:.2f} um (k = 2)")
    print(f"verdict         {record['verdict']} ({args.rule})")
    if record["flags"]:
        print(f"flags           {', '.join(record['flags'])}")
    return 0


_FIELD_TO_FLAG = {
    "measured_mm": "--measured",
    "part_temp_c": "--temp",
    "nominal_mm": "--nominal",
    "tolerance_mm": "--tol",
    "lower_tol_mm": "--lower-tol",
    "upper_tol_mm": "--upper-tol",
    "air_temp_c": "--air-temp",
    "scale_temp_c": "--scale-temp",
    "material": "--material",
    "part_temp_u_k": "--temp-u",
    "scale_temp_u_k": "--temp-u",
    "repeatability_um": "--repeatability-um",
    "cmm_mpe_a_um": "--mpe-a-um",
    "cmm_mpe_k_mm_per_um": "--mpe-k",
    "gradient_factor": "--gradient-factor",
    "assumed_temp_c": "--assumed-temp",
    "assumed_temp_half_range_k": "--assumed-half-range",
    "decision_resolution_um": "--resolution-um",
}


def _flag_for(exc: CmmTwinError) -> str:
    """Phrase a physics error in terms of the flag the user typed."""
    name = getattr(exc, "field", None) or getattr(exc, "key", None)
    reason = getattr(exc, "reason", None)
    if name in _FIELD_TO_FLAG and reason is not None:
        return f"{_FIELD_TO_FLAG[name]}: {reason}"
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
