"""A measurement report as the format writers take it: characteristics, and parts with one value
per characteristic (what a CMM run produces, or what the gateway computed from one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ReportCharacteristic:
    """One characteristic of the report."""

    number: int
    """1-based, in report order (Q-DAS K2001 / the `/n` index)."""
    name: str
    """Description (Q-DAS K2002, Calypso id, QIF characteristic name)."""
    unit: str
    """`mm`, `um`, `inch`, `deg`, or `degC` for a temperature characteristic."""
    nominal: float | None
    lower: float | None = None
    """Lower limit relative to the nominal, signed, in `unit`; None: no lower limit."""
    upper: float | None = None
    """Upper limit relative to the nominal, signed, in `unit`; None: no upper limit."""
    decimals: int = 4
    """Decimal places the values are written with."""


@dataclass(frozen=True)
class ReportValue:
    """One value of a characteristic on a part, in the characteristic's unit."""

    value: float | None
    """None: not measured (or invalid)."""
    uncertainty: float | None = None
    """Combined standard uncertainty u_c in the characteristic's unit (results only)."""
    status: str | None = None
    """QIF CharacteristicStatusEnum (PASS, FAIL, INDETERMINATE, UNDEFINED...; results only)."""


@dataclass(frozen=True)
class ReportPart:
    """One measured part: identity, time, temperatures and one value per characteristic."""

    part_id: str
    machine_id: str
    timestamp: datetime
    """Aware; writers of local-time formats convert it to the zone they are given."""
    values: Sequence[ReportValue]
    """One per characteristic of the report, in its order."""
    part_temp_c: float | None = None
    air_temp_c: float | None = None


@dataclass(frozen=True)
class Report:
    """A report: what one file holds."""

    part_number: str
    part_description: str
    characteristics: Sequence[ReportCharacteristic]
    parts: Sequence[ReportPart] = field(default_factory=list)
