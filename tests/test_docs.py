"""The README's configuration reference cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

from cmm_twin.gateway.config import OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_gateway_flag_and_variable_is_documented() -> None:
    for option in OPTIONS:
        assert f"`{option.flag}" in README, f"{option.flag} missing from the README"
        assert f"`{option.env}`" in README, f"{option.env} missing from the README"
    assert "`--config FILE.toml`" in README


def test_readme_names_the_two_commands() -> None:
    assert "make run" in README
    assert "make test" in README
