"""`cmm-twin nodesets [DIR]`: fetch the OPC UA nodesets of the Machinery model for an installed package.

Runs the pinned fetch shipped in the package (`nodesets.sh` beside this module; `scripts/nodesets.sh`
in a checkout runs the same file): `npm pack` of one exact node-opcua-nodesets version, its sha512
checked, four files extracted into DIR, by default where the gateway looks
(`<python prefix>/share/cmm-twin/nodesets`). Needs bash, npm and openssl; without npm or the
registry it says so and exits 0, and the gateway serves OPC UA without the Machinery model.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPT = Path(__file__).with_name("nodesets.sh")
PROG = "cmm-twin nodesets"


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch the nodesets into DIR; the script's exit code (2 when it cannot run at all)."""
    from cmm_twin.gateway.sinks.opcua.nodesets import default_nodesets_dir  # noqa: PLC0415 (loads asyncua)

    default = default_nodesets_dir()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch the OPC UA nodesets DI, IA, Machinery and Machinery Result (npm package "
        "node-opcua-nodesets, version and sha512 pinned) for the gateway's Machinery model.",
    )
    parser.add_argument("dir", nargs="?", type=Path, default=default, metavar="DIR", help=f"default: {default}")
    args = parser.parse_args(argv)
    bash = shutil.which("bash")
    if bash is None:
        print(f"{PROG}: error: bash not found (the fetch is a bash script: {SCRIPT})", file=sys.stderr)
        return 2
    if not SCRIPT.is_file():
        print(f"{PROG}: error: {SCRIPT} is missing from the installed package", file=sys.stderr)
        return 2
    return subprocess.run([bash, str(SCRIPT), str(args.dir)], check=False).returncode
