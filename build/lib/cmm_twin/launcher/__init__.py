"""`python -m cmm_twin run`: the whole twin on this machine with one command (`make run`).

Starts three child processes with this Python, loopback only, each once the one before is ready:
the mock MES, the edge gateway delivering to it (embedded historian, OPC UA, `/health`), then the
shop simulator writing into the gateway's inbox. Their stdout and stderr are streamed line by line
to this process's stdout behind a fixed-width prefix (`mes       | `, `gateway   | `,
`simulator | `; the launcher's own lines carry `launcher  | `).

The children run in sessions of their own, so a terminal's Ctrl+C reaches only the launcher, which
stops them in the order of the data flow: the simulator first (it finishes the file in hand), then
the gateway (it finishes the chunk in hand and closes its sinks), then the MES; each gets SIGTERM
and, after `STOP_TIMEOUT_S`, SIGKILL. A second Ctrl+C kills what is still running at once. On
Linux each child also gets SIGTERM from the kernel if the launcher itself dies without stopping
them (kill -9), so no child outlives it.

A child that exits by itself is a failure: the launcher says so and stops the others. Exit codes:
0 everything stopped cleanly, 1 a child failed (to start, while running, or to stop cleanly),
2 an invalid option (one line naming it).

Options: flags or `CMM_RUN_<FLAG>` variables (`settings`); the children get theirs as flags only.
Supervision (`supervisor`): starting, following and stopping the children, and the chaos schedule.

Chaos demo (`--chaos-after S`): S seconds after everything is up the MES is killed with SIGKILL,
and restarted `--chaos-down` seconds later on the same port and database; the gateway buffers
meanwhile and flushes at recovery (see docs/architecture.md, 'Delivery guarantees').
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Sequence

from cmm_twin.launcher.settings import OPTIONS, PROG, LauncherSettings, build_parser, load_settings
from cmm_twin.launcher.supervisor import PREFIX_WIDTH, Launcher
from cmm_twin.logs import LOG_FORMAT
from cmm_twin.options import load_or_report

__all__ = ["OPTIONS", "PROG", "Launcher", "LauncherSettings", "build_parser", "load_settings", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m cmm_twin run`; returns the exit code."""
    settings = load_or_report(PROG, lambda: load_settings(argv))
    if settings is None:
        return 2
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"{PROG}: error: --data-dir: cannot create {str(settings.data_dir)!r}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format=f"{'launcher':<{PREFIX_WIDTH}}| {LOG_FORMAT}", stream=sys.stdout)
    try:
        return asyncio.run(Launcher(settings).run())
    except KeyboardInterrupt:  # before the signal handlers were installed: nothing was started
        return 0
