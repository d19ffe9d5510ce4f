"""Process supervision of `python -m cmm_twin run`: the three children started in order, their
output streamed behind a prefix, an exit nobody asked for reported, the stop in the order of the
data flow, and the chaos schedule (see the package docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmm_twin.launcher.settings import CHAOS_COMMAND, LauncherSettings, child_environment
from cmm_twin.simulator.gateway_toml import gateway_toml
from cmm_twin.simulator.shop import SECONDS_PER_DAY

PACKAGE_PARENT = Path(__file__).resolve().parents[2]
"""The directory holding the `cmm_twin` package the launcher runs from: a checkout or site-packages."""
CHILD_COMMAND = [sys.executable, "-m", "cmm_twin"]
"""Each child is `python -m cmm_twin mes|gateway|simulate ...` with this Python: the same package,
installed or not (the checkout's top-level scripts are thin entry points to the same code)."""
HOST = "127.0.0.1"
KILL_WAIT_S = 10.0
READY_TIMEOUT_S = 60.0
"""Longest wait for a child's start-up line."""
DRAIN_WAIT_S = 5.0
"""Longest wait, after a child exited, for the rest of its output."""
LINE_LIMIT = 1 << 20
"""Longest output line passed on whole; a longer one is replaced by a note."""
PREFIX_WIDTH = 10
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

MES_READY_RE = re.compile(r"mock MES listening on http://\S+:(\d+) ")
SHOP_CONFIG_NAME = "simulated-shop.toml"
"""The gateway's configuration the launcher writes into the data directory: the simulated shop's
part catalogue (materials of dfq/calypso/qif parts) and its machines' MPE."""
GATEWAY_READY_RE = re.compile(r"gateway ready: .* HTTP http://([\d.]+):(\d+)/health")
SIMULATOR_READY_RE = re.compile(r"simulator started: ")

log = logging.getLogger("cmm_twin.launcher")


# ----------------------------------------------------------------------------- children


@dataclass
class _Run:
    """One incarnation of a child process (the MES has two after a chaos restart)."""

    proc: asyncio.subprocess.Process
    ready: asyncio.Future[re.Match[str]]
    """Resolved by the first output line matching the child's start-up pattern."""
    expected_exit: bool = False
    """Set before the launcher stops or kills it: its exit is then no failure."""
    follower: asyncio.Task[None] | None = None
    """Streams its output until EOF, then reaps it."""


@dataclass
class _Child:
    name: str
    ready_re: re.Pattern[str]
    argv: list[str]
    current: _Run | None = None
    runs: list[_Run] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.name:<{PREFIX_WIDTH}}| "


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a function run in each child before exec that asks the kernel for SIGTERM when the
    launcher dies (PR_SET_PDEATHSIG), so a launcher killed with SIGKILL leaves no orphan."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    pr_set_pdeathsig = 1
    launcher_pid = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != launcher_pid:  # the launcher died before the request took effect
            os._exit(1)

    return preexec


class Launcher:
    """Starts, follows and stops the three children (one instance per `run`, inside its event loop)."""

    def __init__(self, settings: LauncherSettings) -> None:
        self.settings = settings
        self.mes_port = settings.mes_port
        self.http_port = settings.http_port
        self.opcua_endpoint = f"opc.tcp://{HOST}:{settings.opcua_port}/cmm-twin/"
        self.failed = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._signals = 0
        self._children: list[_Child] = []
        self._tg: asyncio.TaskGroup | None = None
        self._env = child_environment(os.environ)
        if (PACKAGE_PARENT / "pyproject.toml").is_file():  # a checkout run from elsewhere: the children import it too
            paths = [str(PACKAGE_PARENT), self._env.get("PYTHONPATH")]
            self._env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        self._preexec = _parent_death_signal()
        self._output_ok = True

    async def run(self) -> int:
        """Start everything, run until a stop signal or a failure, stop everything; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                chaos: asyncio.Task[None] | None = None
                try:
                    if await self._start_all():
                        self._print_urls()
                        if self.settings.chaos_after is not None:
                            chaos = tg.create_task(self._chaos(self.settings.chaos_after), name="chaos")
                        await self._stop.wait()
                finally:
                    self._stop.set()
                    try:
                        if chaos is not None:
                            await chaos  # it honours the stop event
                    finally:
                        await self._stop_all()
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)
        if self._force.is_set():
            log.error("cmm-twin killed at the second stop signal")
            return 1
        if self.failed:
            log.error("cmm-twin stopped after a failure (see above)")
            return 1
        log.info("cmm-twin stopped cleanly")
        return 0

    # ------------------------------------------------------------------ start

    async def _start_all(self) -> bool:
        """Start the MES, the gateway, the simulator, each after the one before is ready."""
        s = self.settings
        mes = self._child("mes", MES_READY_RE, "mes", self._mes_args(self.mes_port))
        match = await self._start(mes)
        if match is None:
            return False
        self.mes_port = int(match.group(1))
        # A restart takes the same port.
        mes.argv = [*mes.argv[: len(CHILD_COMMAND) + 1], *self._mes_args(self.mes_port)]

        if s.outbox:  # the outbox directory stands for a share that exists (a missing one buffers)
            (s.data_dir / "outbox").mkdir(parents=True, exist_ok=True)
        shop_config = s.data_dir / SHOP_CONFIG_NAME  # the simulated shop's part catalogue and machines
        shop_config.write_text(gateway_toml(s.machines), encoding="utf-8")
        gateway_args = [
            "--data-dir", str(s.data_dir),
            "--config", str(shop_config),
            "--mes-url", f"http://{HOST}:{self.mes_port}",
            "--http", f"{HOST}:{s.http_port}",
            "--opcua-endpoint", self.opcua_endpoint,
            "--historian", "sqlite",
            "--health-interval-s", "1",
            *(["--outbox", str(s.data_dir / "outbox")] if s.outbox else []),
        ]  # fmt: skip
        match = await self._start(self._child("gateway", GATEWAY_READY_RE, "gateway", gateway_args))
        if match is None:
            return False
        self.http_port = int(match.group(2))

        simulator_args = [
            "--outdir", str(s.data_dir / "inbox"),
            "--truth-dir", str(s.data_dir / "truth"),
            "--machines", str(s.machines),
            "--rate", str(s.rate),
            "--speedup", str(s.speedup),
            "--format", s.format,
        ]  # fmt: skip
        return await self._start(self._child("simulator", SIMULATOR_READY_RE, "simulate", simulator_args)) is not None

    def _mes_args(self, port: int) -> list[str]:
        return ["--host", HOST, "--port", str(port), "--db", str(self.settings.data_dir / "mes.sqlite")]

    def _child(self, name: str, ready_re: re.Pattern[str], command: str, args: list[str]) -> _Child:
        child = _Child(name, ready_re, [*CHILD_COMMAND, command, *args])
        self._children.append(child)
        return child

    async def _start(self, child: _Child) -> re.Match[str] | None:
        """Start `child` and wait for its start-up line; None (and the stop event set) when it
        cannot start, exits, or the launcher is asked to stop meanwhile."""
        if self._stop.is_set():
            return None
        assert self._tg is not None
        try:
            proc = await asyncio.create_subprocess_exec(
                *child.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
                preexec_fn=self._preexec,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            self._fail("cannot start %s (%s): %s", child.name, shlex.join(child.argv), exc)
            return None
        run = _Run(proc, asyncio.get_running_loop().create_future())
        child.current = run
        child.runs.append(run)
        log.info("started %s pid %d: %s", child.name, proc.pid, shlex.join(child.argv[1:]))
        run.follower = self._tg.create_task(self._follow(child, run), name=f"follow-{child.name}")

        stop = asyncio.ensure_future(self._stop.wait())
        waiters: set[asyncio.Future[Any]] = {run.ready, run.follower, stop}
        try:
            done, _ = await asyncio.wait(waiters, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if run.ready.done():
            return run.ready.result()
        if not done:
            self._fail("%s (pid %d) did not start within %g s: stopping", child.name, proc.pid, READY_TIMEOUT_S)
        return None

    # ------------------------------------------------------------------ follow

    async def _follow(self, child: _Child, run: _Run) -> None:
        """Pass the child's output on line by line; once it exits, report an exit nobody asked for."""
        stream = run.proc.stdout
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over LINE_LIMIT: asyncio dropped it
                self._write(f"{child.prefix}[an output line over {LINE_LIMIT} bytes was left out]\n")
                continue
            if not raw:
                break
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            self._write(f"{child.prefix}{text}\n")
            if not run.ready.done() and (match := child.ready_re.search(text)):
                run.ready.set_result(match)
        returncode = await run.proc.wait()
        if not run.expected_exit:
            self._fail(
                "%s (pid %d) DIED UNEXPECTEDLY with %s: stopping the others",
                child.name,
                run.proc.pid,
                _describe(returncode),
            )

    def _write(self, text: str) -> None:
        """One whole write per line (or block), so lines of different children never mix."""
        if not self._output_ok:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError):  # stdout closed (a pipe reader gone): keep draining the children
            self._output_ok = False

    def _print_urls(self) -> None:
        s = self.settings
        web = f"http://{HOST}:{self.http_port}"
        day_min = SECONDS_PER_DAY / s.speedup / 60
        chaos = (
            f"Chaos:     the MES is killed {s.chaos_after:g} s from now and restarted {s.chaos_down:g} s later"
            if s.chaos_after is not None
            else f"Chaos demo: {CHAOS_COMMAND}"
        )
        rule = "=" * 96
        lines = [
            rule,
            "cmm-twin is running: simulator -> inbox -> edge gateway -> OPC UA | MES | historian",
            f"  live page   {web}/",
            f"  health      {web}/health    metrics {web}/metrics",
            f"  history     {web}/api/v1/history?machine_id=CMM-01&fields=part_temp_c,measured_mm,compensated_mm",
            f"  OPC UA      {self.opcua_endpoint}",
            f"  MES         http://{HOST}:{self.mes_port}/api/v1/stats",
            f"  data        {s.data_dir}/ (inbox, archive, quarantine, state, truth, mes.sqlite)",
            f"  shop        {s.machines} CMMs, {s.rate:g} parts/s, speedup {s.speedup:g}"
            f" (a shop day every {day_min:.3g} min)",
            "Stop:      Ctrl+C (the simulator first, then the gateway, then the MES)",
            chaos,
            rule,
        ]
        self._write("".join(line + "\n" for line in lines))

    # ------------------------------------------------------------------ chaos

    async def _chaos(self, after_s: float) -> None:
        """Kill the MES with SIGKILL `after_s` seconds from now; restart it `chaos_down` s later."""
        down_s = self.settings.chaos_down
        mes = self._children[0]
        if await self._sleep_or_stop(after_s):
            return
        run = mes.current
        if run is None or run.proc.returncode is not None:
            return
        run.expected_exit = True
        # Said before the kill: the gateway's "Network Lost!" may follow within milliseconds.
        log.warning(
            "chaos: killing the MES for %g s (SIGKILL to pid %d): the gateway buffers meanwhile", down_s, run.proc.pid
        )
        self._signal(run, signal.SIGKILL)
        await run.proc.wait()
        if await self._sleep_or_stop(down_s):
            return
        if await self._start(mes) is not None:
            log.warning("chaos: MES restarted (pid %d, port %d, same database)", mes.runs[-1].proc.pid, self.mes_port)

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Wait `seconds`; True when the stop event came first."""
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ stop

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("%s: stopping the simulator, then the gateway, then the MES (again to kill them at once)", name)
            self._stop.set()
        else:
            log.warning("%s again: killing what is still running", name)
            self.failed = True
            self._force.set()

    def _fail(self, message: str, *args: object) -> None:
        log.error(message, *args)
        self.failed = True
        self._stop.set()

    async def _stop_all(self) -> None:
        """Stop the children in the order of the data flow: simulator, gateway, MES."""
        for child in reversed(self._children):
            for run in child.runs:
                await self._stop_run(child, run)

    async def _stop_run(self, child: _Child, run: _Run) -> None:
        run.expected_exit = True
        pid, timeout_s = run.proc.pid, self.settings.stop_timeout_s
        if run.proc.returncode is None:  # else it exited already (its follower said so if unasked)
            if not self._force.is_set():
                log.info("stopping %s (pid %d): SIGTERM", child.name, pid)
                self._signal(run, signal.SIGTERM)
                await self._wait_exit(run, timeout_s, forced=True)
                if run.proc.returncode is None and not self._force.is_set():
                    self._fail("%s (pid %d) still runs %g s after SIGTERM: SIGKILL", child.name, pid, timeout_s)
            if run.proc.returncode is None:
                log.warning("killing %s (pid %d): SIGKILL", child.name, pid)
                self._signal(run, signal.SIGKILL)
                await self._wait_exit(run, KILL_WAIT_S, forced=False)
                if run.proc.returncode is None:
                    self._fail("%s (pid %d) survived SIGKILL for %g s", child.name, pid, KILL_WAIT_S)
            elif run.proc.returncode in (0, -signal.SIGTERM):  # -SIGTERM: stopped before it could handle it
                log.info("%s stopped", child.name)
            else:
                self._fail("%s (pid %d) stopped with %s", child.name, pid, _describe(run.proc.returncode))
        if run.follower is not None:  # the rest of its output
            await asyncio.wait({run.follower}, timeout=DRAIN_WAIT_S)

    async def _wait_exit(self, run: _Run, timeout_s: float, *, forced: bool) -> None:
        """Wait until the process exits, at most `timeout_s` (with `forced`: or a second stop signal)."""
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(run.proc.wait())}
        if forced:
            waiters.add(asyncio.ensure_future(self._force.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    @staticmethod
    def _signal(run: _Run, signum: signal.Signals) -> None:
        """Signal the child's process group (its session: the child and anything it started)."""
        if run.proc.returncode is not None:  # reaped: its pid may belong to someone else by now
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signum)
