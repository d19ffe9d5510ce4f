"""`python -m cmm_twin COMMAND`: the commands of cmm-twin.

    python -m cmm_twin run            # the mock MES, the edge gateway and the simulator; Ctrl+C stops all

`python -m cmm_twin run --help` lists the options of a command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cmm_twin import __version__

PROG = "python -m cmm_twin"


def _run(argv: Sequence[str]) -> int:
    from cmm_twin.launcher import main  # noqa: PLC0415 (imported on use: it loads NumPy)

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "run": (
        _run,
        "start the whole twin: mock MES, edge gateway and shop simulator (Ctrl+C stops all; see run --help)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level command line; each command parses its own options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="cmm-twin: edge gateway and digital twin for dimensional metrology.",
        epilog="The physics by hand: python -m cmm_twin.physics --help",
    )
    parser.add_argument("--version", action="version", version=f"cmm-twin {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)  # the command prints its own --help
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the command; returns its exit code (2 for an unknown command)."""
    args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else list(argv))
    command, _ = COMMANDS[args.command]
    return command(rest)


if __name__ == "__main__":
    raise SystemExit(main())
