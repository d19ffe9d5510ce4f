"""`cmm-twin COMMAND` (installed) or `python -m cmm_twin COMMAND` (a checkout): the commands of cmm-twin.

    cmm-twin run            # the mock MES, the edge gateway and the simulator; Ctrl+C stops all
    cmm-twin gateway        # the edge gateway alone (= python cmm_edge_gateway.py)
    cmm-twin mes            # the mock MES alone (= python mock_mes.py)
    cmm-twin simulate       # the shop simulator alone (= python cmm_simulator.py)
    cmm-twin nodesets       # fetch the OPC UA nodesets of the Machinery model (npm, pinned)

`cmm-twin COMMAND --help` lists the options of a command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cmm_twin import __version__

PROG = "cmm-twin"

# Each command imports its program on use: `--version` and `--help` stay fast, and one program's
# imports (NumPy, asyncua, aiohttp) are not paid by another.


def _run(argv: Sequence[str]) -> int:
    from cmm_twin.launcher import main  # noqa: PLC0415

    return main(argv)


def _gateway(argv: Sequence[str]) -> int:
    from cmm_twin.gateway.cli import main  # noqa: PLC0415

    return main(argv)


def _mes(argv: Sequence[str]) -> int:
    from cmm_twin.mes.cli import main  # noqa: PLC0415

    return main(argv)


def _simulate(argv: Sequence[str]) -> int:
    from cmm_twin.simulator.cli import main  # noqa: PLC0415

    return main(list(argv))


def _nodesets(argv: Sequence[str]) -> int:
    from cmm_twin.launcher.nodesets import main  # noqa: PLC0415

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "run": (
        _run,
        "start the whole twin: mock MES, edge gateway and shop simulator (Ctrl+C stops all; see run --help)",
    ),
    "gateway": (_gateway, "the edge gateway alone: inbox, compensation, OPC UA, MES, historian, live page"),
    "mes": (_mes, "the mock MES alone: receives, validates and stores measurements"),
    "simulate": (_simulate, "the shop simulator alone: writes measurement files into an inbox"),
    "nodesets": (_nodesets, "fetch the OPC UA nodesets of the Machinery model (npm; version and sha512 pinned)"),
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
