"""Parameters of the simulated shop (`ShopScenario`) and its presets (`--scenario lab|shop|hot-parts`);
the model they drive: docs/simulator.md."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Final

from cmm_twin.errors import ConfigError


@dataclass(frozen=True)
class ShopScenario:
    """Parameters of the shop model; the defaults are the `shop` scenario (docs/simulator.md)."""

    name: str = "shop"
    # --- shop air: T_air(t) = mean + daily sine + HVAC sine + white noise
    air_mean_c: float = 22.0
    air_daily_amplitude_k: float = 3.5
    air_daily_phase_rad: float = -math.pi / 2.0
    """Phase of the daily sine; -pi/2 puts the coldest moment at shop time 0."""
    hvac_amplitude_k: float = 0.4
    hvac_period_s: float = 1200.0
    air_noise_k: float = 0.05
    """Standard deviation of the white noise of the air temperature (per part)."""
    # --- parts arriving warm and cooling (first-order lag)
    arrival_excess_min_k: float = 0.0
    arrival_excess_max_k: float = 6.0
    """Parts arrive U(min, max) K warmer than the air."""
    wait_min_s: float = 0.0
    wait_max_s: float = 3600.0
    """Parts wait U(min, max) s between arrival and the first feature's measurement."""
    cooling_tau_s: float = 1800.0
    """Time constant of the first-order cooling of a part's mean temperature towards the air."""
    gradient_fraction: float = 0.15
    """While not soaked the surface lags the mean: T_surface - T_air = (1 - g) (T_mean - T_air)."""
    feature_time_s: float = 30.0
    """Time between two features of a part on the CMM."""
    shop_step_s: float = 60.0
    """Shop time between two consecutive parts; part k is measured at shop time k * shop_step_s."""
    # --- manufacturing and material
    mfg_sigma_rel: float = 0.6
    """Manufacturing scatter of a two-sided feature, relative to the half-width of its zone."""
    one_sided_sigma_rel: float = 0.25
    """Manufacturing scatter of a one-sided feature, relative to its catalogue `spread`."""
    one_sided_margin_sigma: float = 2.0
    """A one-sided feature is centred this many sigmas inside its limit."""
    lot_size: int = 50
    """Consecutive parts of one type that share a material lot (one true CTE)."""
    cte_lot_half_width_rel: float | None = None
    """A lot's CTE is table CTE x (1 + U(-h, h)); None: the material's `cte_half_width_rel`."""
    # --- CMM and sensors
    mpe_usage: float = 1.0
    """Fraction of the MPE the machines' systematic errors may use (a_m, b_m drawn within it)."""
    probe_sigma_um: float = 0.5
    """Probing noise per feature (standard deviation)."""
    angle_sigma_deg: float = 0.005
    """Noise of a measured angle (standard deviation)."""
    pt100_tolerance_a_k: float = 0.15
    pt100_tolerance_b_per_k: float = 0.002
    """Part sensor offset U(-(a + b*|t_ref|), +(a + b*|t_ref|)) K, IEC 60751 class A."""
    pt100_reference_c: float = 20.0
    air_sensor_half_width_k: float = 0.1
    """Air sensor offset U(-h, h) K."""
    sensor_noise_k: float = 0.02
    """Reading noise of either thermometer (standard deviation, per reading)."""

    def __post_init__(self) -> None:
        non_negative = (
            "air_daily_amplitude_k",
            "hvac_amplitude_k",
            "air_noise_k",
            "arrival_excess_min_k",
            "wait_min_s",
            "feature_time_s",
            "mfg_sigma_rel",
            "one_sided_sigma_rel",
            "one_sided_margin_sigma",
            "mpe_usage",
            "probe_sigma_um",
            "angle_sigma_deg",
            "pt100_tolerance_a_k",
            "pt100_tolerance_b_per_k",
            "air_sensor_half_width_k",
            "sensor_noise_k",
        )
        for name in non_negative:
            _require(name, getattr(self, name), lower=0.0, strict=False)
        for name in ("hvac_period_s", "cooling_tau_s", "shop_step_s"):
            _require(name, getattr(self, name), lower=0.0, strict=True)
        _require("air_mean_c", self.air_mean_c, lower=-20.0, strict=False)
        _require("air_daily_phase_rad", self.air_daily_phase_rad, lower=-math.inf, strict=False)
        _require("pt100_reference_c", self.pt100_reference_c, lower=-200.0, strict=False)
        if self.arrival_excess_max_k < self.arrival_excess_min_k:
            raise ConfigError("scenario.arrival_excess_max_k", "must not be below arrival_excess_min_k")
        if self.wait_max_s < self.wait_min_s:
            raise ConfigError("scenario.wait_max_s", "must not be below wait_min_s")
        if not 0.0 <= self.gradient_fraction < 1.0:
            raise ConfigError("scenario.gradient_fraction", f"must be in [0, 1), got {self.gradient_fraction!r}")
        if self.mpe_usage > 1.0:
            raise ConfigError(
                "scenario.mpe_usage", f"must be in [0, 1] (errors within the MPE), got {self.mpe_usage!r}"
            )
        if isinstance(self.lot_size, bool) or not isinstance(self.lot_size, int) or self.lot_size < 1:
            raise ConfigError("scenario.lot_size", f"must be an integer >= 1, got {self.lot_size!r}")
        if self.cte_lot_half_width_rel is not None and not 0.0 <= self.cte_lot_half_width_rel < 1.0:
            raise ConfigError(
                "scenario.cte_lot_half_width_rel", f"must be in [0, 1), got {self.cte_lot_half_width_rel!r}"
            )

    @property
    def pt100_half_width_k(self) -> float:
        """Half-width of the part sensor's offset: a + b * |t_ref| (IEC 60751)."""
        return self.pt100_tolerance_a_k + self.pt100_tolerance_b_per_k * abs(self.pt100_reference_c)


def _require(name: str, value: float, *, lower: float, strict: bool) -> None:
    number = float(value)
    if not math.isfinite(number) or number < lower or (strict and number == lower):
        relation = ">" if strict else ">="
        raise ConfigError(f"scenario.{name}", f"must be a finite number {relation} {lower:g}, got {value!r}")


_SHOP = ShopScenario()
SCENARIOS: Final[dict[str, ShopScenario]] = {
    "lab": dataclasses.replace(
        _SHOP,
        name="lab",
        air_mean_c=20.0,
        air_daily_amplitude_k=0.3,
        hvac_amplitude_k=0.15,
        air_noise_k=0.02,
        arrival_excess_min_k=0.0,
        arrival_excess_max_k=0.5,
        wait_min_s=1800.0,
        wait_max_s=7200.0,
    ),
    "shop": _SHOP,
    "hot-parts": dataclasses.replace(
        _SHOP, name="hot-parts", arrival_excess_min_k=4.0, arrival_excess_max_k=12.0, wait_min_s=0.0, wait_max_s=600.0
    ),
}
"""The presets of `--scenario`: a metrology lab at 20 +- 0.5 degC with soaked parts, the production
shop, and parts straight from machining into the shop."""


def scenario(name: str) -> ShopScenario:
    """The preset `name` (lab, shop or hot-parts); ConfigError naming `--scenario` otherwise."""
    found = SCENARIOS.get(name.strip().lower())
    if found is None:
        raise ConfigError("--scenario", f"expected one of {', '.join(SCENARIOS)}, got {name!r}")
    return found
