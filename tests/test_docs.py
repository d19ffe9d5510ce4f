"""The README's configuration reference cannot drift from the code."""

from __future__ import annotations

from cmm_twin import reference
from cmm_twin.gateway.config import OPTIONS
from cmm_twin.mes import cli as mes_cli

README = reference.README.read_text(encoding="utf-8")


def test_the_configuration_reference_is_generated_from_the_code() -> None:
    assert reference.replace_block(README, reference.render()) == README, (
        "README.md is stale: run .venv/bin/python -m cmm_twin.reference --write"
    )
    assert reference.main(["--check"]) == 0


def test_every_flag_and_variable_is_in_the_reference() -> None:
    block = reference.render()
    for option in (*OPTIONS, *mes_cli.OPTIONS):
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
