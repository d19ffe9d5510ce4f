"""Gateway configuration: precedence, TOML sections, validation naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.config import GatewayConfig, load_config
from cmm_twin.gateway.sinks.historian.settings import HistorianSettings
from cmm_twin.physics import DecisionRule


def historian_of(config: GatewayConfig) -> HistorianSettings | None:
    return HistorianSettings.from_config(config)


def test_defaults_bind_to_loopback() -> None:
    config = load_config([], environ={})
    assert config.http == ("127.0.0.1", 8080)
    assert config.options["opcua_endpoint"] == "opc.tcp://127.0.0.1:4840/cmm-twin/"
    historian = historian_of(config)
    assert historian is not None and historian.kind == "sqlite", "the embedded historian without InfluxDB"
    assert not config.options["opcua_allow_anonymous"]


def test_historian_choice_and_influx_flags() -> None:
    influx = ["--influx-url", "http://127.0.0.1:8086", "--influx-org", "plant", "--influx-bucket", "cmm"]
    config = load_config(influx, environ={})
    settings = historian_of(config)
    assert settings is not None and settings.influx is not None
    assert (settings.kind, settings.influx.org, settings.influx.bucket) == ("influx", "plant", "cmm")
    assert settings.influx.precision == "ns" and settings.batch_size == 5000
    assert historian_of(load_config(["--historian", "none"], environ={})) is None
    assert load_config([], environ={"CMM_INFLUX_PRECISION": "MS"}).options["influx_precision"] == "ms"
    with pytest.raises(ConfigError, match="--influx-bucket: required with --historian influx"):
        load_config(influx[:4], environ={})
    with pytest.raises(ConfigError, match="--influx-url: only used with --historian influx"):
        load_config(["--historian", "sqlite", *influx], environ={})
    with pytest.raises(ConfigError, match="--influx-precision: expected ns or ms"):
        load_config(["--influx-precision", "s"], environ={})
    with pytest.raises(ConfigError, match="CMM_HISTORY_RETENTION_DAYS: must be > 0"):
        load_config([], environ={"CMM_HISTORY_RETENTION_DAYS": "0"})


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    toml = tmp_path / "gw.toml"
    toml.write_text('settle_ms = 111\nlog_level = "debug"\ndata_dir = "from_file"\nonce = true\n')
    env = {"CMM_CONFIG": str(toml), "CMM_SETTLE_MS": "222", "CMM_DATA_DIR": "from_env"}
    config = load_config(["--data-dir", "from_flag"], environ=env)
    assert config.data_dir == Path("from_flag")
    assert config.settle_ms == 222.0
    assert config.log_level == "DEBUG"
    assert config.once is True


def test_toml_sections_reach_the_physics(tmp_path: Path) -> None:
    toml = tmp_path / "gw.toml"
    toml.write_text(
        '[physics]\nrule = "simple"\npart_temp_u_k = 0.1\nscale_material = "steel_1020"\n'
        "[limits]\nrated_min_c = 18\nrated_max_c = 22\n"
        '[materials.cu_etp]\ncte_per_k = 16.9e-6\nsource = "CDA C11000"\n'
        "[ingest]\nchunk_rows = 500\n"
    )
    config = load_config(["--config", str(toml), "--default-material", "CU_ETP"], environ={})
    assert config.physics.rule is DecisionRule.SIMPLE
    assert config.physics.uncertainty.part_temp_u_k == 0.1
    assert config.physics.scale_cte_per_k == pytest.approx(11.7e-6)
    assert config.physics.limits.rated_max_c == 22
    assert config.materials["CU_ETP"].cte_per_k == 16.9e-6
    assert config.chunk_rows == 500


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ('[physics]\nrule = "fuzzy"\n', "physics.rule"),
        ("[physics]\nrepeatability_um = -1\n", "repeatability_um"),
        ("[limits]\nrated_min_c = 40\nrated_max_c = 30\n", "rated_min_c"),
        ("[ingest]\nchunk_rows = 0\n", "ingest.chunk_rows"),
        ("[sinks]\nbackoff_min_s = 5\nbackoff_max_s = 1\n", "sinks.backoff_min_s"),
        ("[sinks]\nbatch_size = 1.5\n", "sinks.batch_size"),
        ("[materials.X]\ncte_per_k = 1e-5\n", "materials.X.source"),
        ('http = "127.0.0.1:99999"\n', "http"),
        ("not toml [", "--config"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    toml = tmp_path / "gw.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", str(toml)], environ={})
    assert key in str(caught.value)


def test_switch_from_environment_is_validated() -> None:
    with pytest.raises(ConfigError, match="CMM_ONCE: expected true/false"):
        load_config([], environ={"CMM_ONCE": "maybe"})
    assert load_config([], environ={"CMM_ONCE": "yes"}).once is True
