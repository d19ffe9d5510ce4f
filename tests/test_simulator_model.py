"""The shop model's error sources, each checked against hand-computed values: cooling with a
gradient, per-machine CMM error within its MPE, per-sensor offsets, per-lot CTE, the catalogue's
coverage of materials, feature kinds and zones, the scenarios, and the `--scenario` / `--mpe` flags."""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.errors import ConfigError
from cmm_twin.physics.materials import MATERIALS
from cmm_twin.simulator.catalogue import CATALOGUE, FEATURE_KINDS, parts_table
from cmm_twin.simulator.cli import parse_settings
from cmm_twin.simulator.machines import machines_table, parse_mpe
from cmm_twin.simulator.scenario import SCENARIOS, ShopScenario, scenario
from cmm_twin.simulator.shop import ShopModel

REPO_ROOT = Path(__file__).resolve().parents[1]
QUIET = ShopScenario(
    air_daily_amplitude_k=0.0,
    hvac_amplitude_k=0.0,
    air_noise_k=0.0,
    arrival_excess_min_k=4.0,
    arrival_excess_max_k=4.0,
    wait_min_s=600.0,
    wait_max_s=600.0,
    sensor_noise_k=0.0,
    probe_sigma_um=0.0,
    angle_sigma_deg=0.0,
    mpe_usage=0.0,
    mfg_sigma_rel=0.0,
    one_sided_sigma_rel=0.0,
)
"""Air at 22 degC, parts 4 K warm after 10 min, no noise, no CMM error, no manufacturing scatter."""


def test_cooling_gradient_and_expansion_by_hand() -> None:
    batch = ShopModel(QUIET, seed=2, machines=1).parts(0, 1)  # a flange, AL6061
    assert batch.feature.tolist() == ["bore_d", "outer_d", "bolt_circle", "spigot_depth", "chamfer_angle"]
    # T_mean(t_i) = 22 + 4 exp(-(600 + 30 i) / 1800)
    assert batch.true_part_temp_c[0] == pytest.approx(24.86612524229516, abs=1e-12)
    assert batch.true_part_temp_c[1] == pytest.approx(24.818752358874853, abs=1e-12)
    # the surface, read once at t_0: 22 + 0.85 x 4 exp(-1/3)
    np.testing.assert_allclose(batch.true_surface_temp_c, 24.436206455950884, atol=1e-12)
    offset = float(batch.part_sensor_offset_k[0])
    np.testing.assert_allclose(batch.part_temp_c, 24.436206455950884 + offset, atol=1e-12)
    np.testing.assert_allclose(batch.air_temp_c, 22.0 + float(batch.air_sensor_offset_k[0]), atol=1e-12)
    # true sizes at the zone centres (no scatter); the one-sided depth sits on its limit
    np.testing.assert_allclose(batch.true_value, [40.0125, 120.0, 80.0, 12.03, 45.0], atol=1e-12)
    assert batch.conforming.all()
    cte = float(batch.true_cte_per_k[0])
    assert abs(cte / 23.6e-6 - 1.0) <= 0.1
    lengths = batch.true_value[:4] * (1.0 + cte * (batch.true_part_temp_c[:4] - 20.0))
    np.testing.assert_allclose(batch.measured[:4], lengths, rtol=0, atol=1e-12)
    assert batch.measured[4] == 45.0  # an angle: no thermal effect, no noise here
    assert batch.cmm_error_um.tolist() == [0.0] * 5


def test_cmm_error_per_machine_within_its_mpe() -> None:
    mpe = ((1.5, 333.0), (2.5, 250.0))
    model = ShopModel(dataclasses.replace(QUIET, mpe_usage=1.0), seed=9, machines=3, mpe=mpe)
    batch = model.parts(0, 2000)
    c = model.constants
    assert c.mpe_a_um.tolist() == [1.5, 2.5, 1.5] and c.mpe_k_mm_per_um.tolist() == [333.0, 250.0, 333.0]
    assert (np.abs(c.error_a_um) <= c.mpe_a_um).all() and (np.abs(c.error_b_um_per_mm) <= 1.0 / c.mpe_k_mm_per_um).all()
    lengths = batch.unit == "mm"
    m = batch.machine_index
    expected = c.error_a_um[m] + c.error_b_um_per_mm[m] * batch.nominal
    np.testing.assert_allclose(batch.cmm_error_um[lengths], expected[lengths], atol=1e-12)
    assert (batch.cmm_error_um[~lengths] == 0.0).all()
    e0 = batch.cmm_mpe_a_um + batch.nominal / batch.cmm_mpe_k_mm_per_um
    assert (np.abs(batch.cmm_error_um) <= e0).all()
    # measured = expansion + e(L) (no probe noise here)
    thermal = batch.true_value * (1.0 + batch.true_cte_per_k * (batch.true_part_temp_c - 20.0))
    np.testing.assert_allclose(
        batch.measured[lengths], (thermal + batch.cmm_error_um / 1000.0)[lengths], rtol=0, atol=1e-11
    )
    # fixed per machine and seed: the same whatever the machine count or the block
    again = ShopModel(dataclasses.replace(QUIET, mpe_usage=1.0), seed=9, machines=5, mpe=mpe).constants
    assert again.error_a_um[:3].tolist() == c.error_a_um.tolist()
    half = ShopModel(dataclasses.replace(QUIET, mpe_usage=0.5), seed=9, machines=3, mpe=mpe).constants
    np.testing.assert_allclose(half.error_b_um_per_mm, c.error_b_um_per_mm / 2.0, rtol=1e-15)
    assert ShopModel(QUIET, seed=10, machines=3, mpe=mpe).constants.error_a_um.tolist() != c.error_a_um.tolist()
    for column in ("part_sensor_offset_k", "air_sensor_offset_k", "cmm_mpe_a_um"):
        per_machine = {(int(k), float(v)) for k, v in zip(m, getattr(batch, column), strict=True)}
        assert len(per_machine) == 3, column


def test_sensor_offsets_are_within_their_class() -> None:
    offsets = np.concatenate([ShopModel(seed=s, machines=10).constants.part_sensor_offset_k for s in range(20)])
    assert np.abs(offsets).max() <= 0.19 and np.abs(offsets).max() > 0.17  # IEC 60751 class A at 20 degC
    air = np.concatenate([ShopModel(seed=s, machines=10).constants.air_sensor_offset_k for s in range(20)])
    assert np.abs(air).max() <= 0.1 and np.abs(air).max() > 0.09


def test_cte_is_shared_per_lot_of_50_parts_of_a_type() -> None:
    batch = ShopModel(seed=4, machines=3).parts(0, 3 * 7 * 40)  # 120 parts of each type
    first = batch.select(batch.feature_index == 0)
    for t, part_type in enumerate(CATALOGUE):
        of_type = first.select(first.part_type == t)
        assert len(of_type) == 120
        assert of_type.cte_lot.tolist() == [k // 50 for k in range(120)]
        ctes = [set(of_type.true_cte_per_k[of_type.cte_lot == lot].tolist()) for lot in range(3)]
        assert all(len(c) == 1 for c in ctes) and len(set().union(*ctes)) == 3
        table = MATERIALS[part_type.material].cte_per_k
        assert all(abs(next(iter(c)) / table - 1.0) <= 0.1 for c in ctes)
    narrow = ShopModel(ShopScenario(cte_lot_half_width_rel=0.01), seed=4).parts(0, 500)
    tables = np.array([MATERIALS[m].cte_per_k for m in narrow.material.tolist()])
    assert np.abs(narrow.true_cte_per_k / tables - 1.0).max() <= 0.01


def test_catalogue_covers_materials_kinds_and_zones_over_20000_features() -> None:
    batch = ShopModel(seed=0).parts(0, 4400).select(slice(0, 20_000))
    materials = collections.Counter(batch.material.tolist())
    kinds = collections.Counter(batch.feature_kind.tolist())
    assert set(materials) == set(MATERIALS) and min(materials.values()) >= 500, materials
    assert set(kinds) == set(FEATURE_KINDS) and min(kinds.values()) >= 500, kinds
    assert kinds["angle"] * 30 >= len(batch)
    assert set(batch.unit[batch.feature_kind == "angle"].tolist()) == {"deg"}
    lower_open, upper_open = np.isnan(batch.lower_tol), np.isnan(batch.upper_tol)
    symmetric = ~np.isnan(batch.tolerance)
    assert lower_open.any() and upper_open.any() and symmetric.any()
    assert (~symmetric & ~lower_open & ~upper_open).any()  # asymmetric, e.g. H7: 0 / +0.025
    nominal_mm = batch.nominal[batch.unit == "mm"]
    assert nominal_mm.min() < 10.5 and nominal_mm.max() >= 280.0
    assert all(3 <= len(t.features) <= 6 for t in CATALOGUE)
    # conforming by hand: true deviation inside [lower, upper], an open side open
    deviation = batch.true_value - batch.nominal
    inside = (lower_open | (deviation >= batch.lower_tol)) & (upper_open | (deviation <= batch.upper_tol))
    assert (inside == batch.conforming).all()
    share_bad = 1.0 - batch.conforming.mean()
    assert 0.05 <= share_bad <= 0.15, share_bad
    assert parts_table() == {t.part_number: {"material": t.material} for t in CATALOGUE}
    assert {v["material"] for v in parts_table().values()} == set(MATERIALS)


def test_scenarios_by_hand() -> None:
    assert set(SCENARIOS) == {"lab", "shop", "hot-parts"} and scenario(" LAB ") is SCENARIOS["lab"]
    with pytest.raises(ConfigError, match="--scenario"):
        scenario("garage")
    lab = ShopModel(SCENARIOS["lab"], seed=1).parts(0, 2000)
    assert lab.true_air_temp_c.min() >= 19.5 and lab.true_air_temp_c.max() <= 20.5
    excess = lab.true_part_temp_c - lab.true_air_temp_c
    assert excess.min() >= 0.0 and excess.max() <= 0.5 * np.exp(-1800 / 1800)  # waited at least 30 min
    hot = ShopModel(SCENARIOS["hot-parts"], seed=1).parts(0, 2000)
    first = hot.feature_index == 0
    excess = (hot.true_part_temp_c - hot.true_air_temp_c)[first]
    assert excess.min() >= 4.0 * np.exp(-600 / 1800) and excess.max() <= 12.0 and excess.max() > 10.0
    gradient = (hot.true_part_temp_c - hot.true_surface_temp_c)[first]
    np.testing.assert_allclose(gradient, 0.15 * excess, atol=1e-9)
    assert ShopScenario().cooling_tau_s == 1800.0


def test_invalid_scenario_values_are_named() -> None:
    for field, value in (("gradient_fraction", 1.0), ("mpe_usage", 1.5), ("lot_size", 0), ("wait_max_s", -1.0)):
        with pytest.raises(ConfigError, match=rf"scenario\.{field}"):
            ShopScenario(**{field: value})  # type: ignore[arg-type]


def test_mpe_flag_and_machines_table() -> None:
    assert parse_mpe("1.5:333") == ((1.5, 333.0),)
    assert parse_mpe(" 1.5:333 , 2:250") == ((1.5, 333.0), (2.0, 250.0))
    assert machines_table(3, parse_mpe("1.5:333,2:250")) == {
        "CMM-01": {"cmm_mpe_a_um": 1.5, "cmm_mpe_k_mm_per_um": 333.0},
        "CMM-02": {"cmm_mpe_a_um": 2.0, "cmm_mpe_k_mm_per_um": 250.0},
        "CMM-03": {"cmm_mpe_a_um": 1.5, "cmm_mpe_k_mm_per_um": 333.0},
    }
    for bad in ("1.5", "1.5:0", "-1:333", "a:b", "1.5:333,", "1.5:333:1"):
        with pytest.raises(ValueError, match=r"A:K|A must|K must"):
            parse_mpe(bad)
    settings = parse_settings(["--outdir", "x", "--mpe", "2:300", "--scenario", "Hot-Parts"], {})
    assert (settings.mpe, settings.scenario) == (((2.0, 300.0),), "hot-parts")
    env = {"CMM_SIM_MPE": "3:200", "CMM_SIM_SCENARIO": "lab"}
    settings = parse_settings(["--outdir", "x"], env)
    assert (settings.mpe, settings.scenario) == (((3.0, 200.0),), "lab")


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--mpe", "1.5:0"], {}, "--mpe"),
        (["--scenario", "garage"], {}, "--scenario"),
        ([], {"CMM_SIM_MPE": "fast"}, "CMM_SIM_MPE"),
        ([], {"CMM_SIM_SCENARIO": "x"}, "CMM_SIM_SCENARIO"),
    ],
)
def test_bad_scenario_or_mpe_exits_2_naming_it(
    tmp_path: Path, args: list[str], env: dict[str, str], names: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CMM_")}
    done = subprocess.run(
        [sys.executable, "cmm_simulator.py", "--outdir", str(tmp_path), *args],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0] and "Traceback" not in done.stderr, done.stderr
