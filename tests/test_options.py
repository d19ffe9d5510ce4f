"""The one configuration resolver: precedence, the empty-variable rule, errors naming their source,
each program's own environment prefix, and the gateway's extensible option table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cmm_twin import launcher
from cmm_twin.errors import ConfigError
from cmm_twin.gateway import config as gateway_config
from cmm_twin.gateway.sinks.plugin import SinkPlugin
from cmm_twin.gateway.sinks.registry import SINK_PLUGINS
from cmm_twin.launcher.settings import child_environment, load_settings
from cmm_twin.mes import cli as mes_cli
from cmm_twin.options import ConfigErrorParser, Option, option_table, parse_number, parse_whole, resolve
from cmm_twin.simulator import cli as simulator_cli

TABLE = option_table(
    "CMM_TEST_",
    (
        Option("--count", parse_whole(1, 9), 1, "a count", "N"),
        Option("--rate", parse_number(0.0), 2.0, "a rate", "HZ"),
        Option("--name", str, None, "a name", "NAME", required=True),
        Option("--fast", str, "false", "a switch", is_switch=True),
    ),
)


def resolve_table(
    argv: list[str], environ: dict[str, str], file_values: dict[str, object] | None = None
) -> dict[str, Any]:
    parser = ConfigErrorParser(prog="test")
    parser.add_options(TABLE)
    return resolve(TABLE, parser.parse_args(argv), environ, file_values, "t.toml").values


def test_flag_beats_variable_beats_file_beats_default() -> None:
    file_values = {"count": 3, "rate": 4.5, "name": "file", "fast": True}
    env = {"CMM_TEST_COUNT": "5", "CMM_TEST_NAME": "env"}
    values = resolve_table(["--count", "7"], env, file_values)
    assert values == {"count": 7, "rate": 4.5, "name": "env", "fast": "true"}
    assert resolve_table([], {"CMM_TEST_NAME": "x"}) == {"count": 1, "rate": 2.0, "name": "x", "fast": "false"}


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_variable_counts_as_unset(empty: str) -> None:
    values = resolve_table([], {"CMM_TEST_COUNT": empty, "CMM_TEST_NAME": "x"}, {"count": 4})
    assert values["count"] == 4, "an empty variable falls through to the file"
    with pytest.raises(ConfigError, match="--name: required"):
        resolve_table([], {"CMM_TEST_NAME": empty})


def test_the_rule_is_the_same_in_every_program(tmp_path: Path) -> None:
    gateway = gateway_config.load_config([], environ={"CMM_MES_URL": "", "CMM_ONCE": "", "CMM_SETTLE_MS": " "})
    assert (gateway.options["mes_url"], gateway.once, gateway.settle_ms) == ("http://127.0.0.1:8000", False, 2000.0)
    mes = mes_cli.load_config(["--db", "x.db"], {"CMM_MES_PORT": "", "CMM_MES_SEED": ""})
    assert (mes.port, mes.seed) == (8000, 0)
    simulator = simulator_cli.parse_settings(["--outdir", str(tmp_path)], {"CMM_SIM_RATE": "", "CMM_SIM_COUNT": ""})
    assert (simulator.rate_hz, simulator.count) == (2.0, None)
    settings = load_settings([], {"CMM_RUN_HTTP_PORT": "", "CMM_RUN_CHAOS_AFTER": ""})
    assert (settings.http_port, settings.chaos_after) == (8080, None)


@pytest.mark.parametrize(
    ("argv", "environ", "file_values", "named"),
    [
        (["--count", "0"], {}, {}, "--count"),
        ([], {"CMM_TEST_COUNT": "many"}, {}, "CMM_TEST_COUNT"),
        ([], {}, {"rate": -1}, "t.toml: rate"),
        (["--bogus"], {}, {}, "arguments"),
    ],
)
def test_an_invalid_value_names_where_it_came_from(
    argv: list[str], environ: dict[str, str], file_values: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_table(["--name", "n", *argv], environ, file_values)
    assert caught.value.key == named


def test_each_program_reads_its_own_prefix_and_no_name_is_shared() -> None:
    tables = {
        "CMM_RUN_": launcher.OPTIONS,
        "CMM_": (*gateway_config.gateway_options(), gateway_config.CONFIG_OPTION),
        "CMM_MES_": mes_cli.OPTIONS,
        "CMM_SIM_": simulator_cli.OPTIONS,
    }
    seen: dict[str, str] = {}
    for prefix, options in tables.items():
        for option in options:
            assert option.env == prefix + option.dest.upper()
            assert option.env not in seen, f"{option.env} read by the {prefix} and the {seen[option.env]} programs"
            seen[option.env] = prefix


def test_a_variable_meant_for_one_program_never_changes_another(tmp_path: Path) -> None:
    environ = {
        # the names the launcher and the simulator both read before each program had its prefix
        "CMM_COUNT": "6",
        "CMM_RATE": "7",
        "CMM_MACHINES": "5",
        "CMM_SPEEDUP": "9",
        "CMM_DATA_DIR": "gateway-data",
        "CMM_HTTP_PORT": "1",
        "CMM_PORT": "2",
        # each program's own
        "CMM_RUN_RATE": "4",
        "CMM_SIM_SEED": "11",
        "CMM_MES_PORT": "9001",
    }
    settings = load_settings([], environ)
    assert (settings.rate, settings.machines, settings.speedup, settings.data_dir) == (4.0, 3, 240.0, Path("data"))
    assert (settings.http_port, settings.mes_port) == (8080, 8000)
    simulator = simulator_cli.parse_settings(["--outdir", str(tmp_path)], environ)
    assert (simulator.count, simulator.rate_hz, simulator.machines, simulator.seed) == (None, 2.0, 3, 11)
    assert mes_cli.load_config(["--db", "x.db"], environ).port == 9001
    assert gateway_config.load_config([], environ=environ).data_dir == Path("gateway-data")


def test_the_launcher_gives_its_children_no_option_variable() -> None:
    environ = {"CMM_COUNT": "6", "CMM_SIM_COUNT": "6", "CMM_ONCE": "1", "MES_TOKEN": "t", "PATH": "/bin"}
    assert child_environment(environ) == {"MES_TOKEN": "t", "PATH": "/bin", "PYTHONUNBUFFERED": "1"}


def test_gateway_options_hold_every_option_by_dest() -> None:
    assert gateway_config.gateway_options()[: len(gateway_config.CORE_OPTIONS)] == gateway_config.CORE_OPTIONS
    config = gateway_config.load_config(["--settle-ms", "5", "--historian", "none"], environ={})
    assert set(config.options) == {o.dest for o in gateway_config.gateway_options()}
    assert (config.options["settle_ms"], config.options["historian"]) == (5.0, "none")
    assert dataclasses.replace(config, settle_ms=7.0).options["settle_ms"] == 7.0, "options follow the typed fields"
    assert gateway_config.GatewayConfig().options["log_level"] == "INFO"


def test_a_plugin_option_is_resolved_and_readable_without_a_typed_field(monkeypatch: pytest.MonkeyPatch) -> None:
    option = Option("--stdout-pretty", str, "no", "a plugin's option", "YESNO")
    plugin = SinkPlugin(name="pretty", build=lambda config, environ: None, options=(option,))
    monkeypatch.setattr(gateway_config, "sink_plugins", lambda: (*SINK_PLUGINS, plugin))
    assert gateway_config.load_config([], environ={"CMM_STDOUT_PRETTY": "yes"}).options["stdout_pretty"] == "yes"
    assert gateway_config.load_config(["--stdout-pretty", "x"], environ={}).options["stdout_pretty"] == "x"
    assert gateway_config.GatewayConfig().options["stdout_pretty"] == "no"
