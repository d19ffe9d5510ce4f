"""The README's configuration reference cannot drift from the code."""

from __future__ import annotations

from cmm_twin import launcher, reference
from cmm_twin.accuracy import cli as accuracy_cli
from cmm_twin.gateway.config import CONFIG_OPTION, gateway_options
from cmm_twin.mes import cli as mes_cli
from cmm_twin.simulator import cli as simulator_cli

README = reference.README.read_text(encoding="utf-8")


def test_the_configuration_reference_is_generated_from_the_code() -> None:
    assert reference.replace_block(README, reference.render()) == README, (
        "README.md is stale: run .venv/bin/python -m cmm_twin.reference --write"
    )
    assert reference.main(["--check"]) == 0


def test_every_flag_and_variable_is_in_the_reference() -> None:
    block = reference.render()
    programs = (
        launcher.OPTIONS,
        (*gateway_options(), CONFIG_OPTION),
        mes_cli.OPTIONS,
        simulator_cli.OPTIONS,
        accuracy_cli.OPTIONS,
    )
    for option in (option for options in programs for option in options):
        assert f"`{option.flag}" in block, f"{option.flag} missing from the README"
        assert f"`{option.env}`" in block, f"{option.env} missing from the README"
    for name, _ in reference.SECRETS:
        assert f"`{name}`" in block
    assert "`--config FILE.toml`" in block


def test_a_stale_reference_is_detected() -> None:
    stale = reference.replace_block(README, "| `--old-flag` | gone |\n")
    assert stale != README
    assert reference.replace_block(stale, reference.render()) == README


def test_readme_names_the_two_commands() -> None:
    assert "make run" in README
    assert "make test" in README
