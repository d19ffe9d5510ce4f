"""The node-opcua client of this folder (an OPC UA stack independent of asyncua) as a Python object:
one JSON command per line on its stdin, one JSON answer per line on its stdout, events in between."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

INTEROP_DIR = Path(__file__).resolve().parent
CLIENT_JS = INTEROP_DIR / "client.js"
PREFIX = "@@interop "
"""Every line of the protocol starts with it (node-opcua writes its own log lines to stdout too)."""
TIMEOUT_S = 60.0


def missing_client() -> str | None:
    """Why the node-opcua client cannot run here (what to install), or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed: install Debian's nodejs and npm (as root `make interop-deps` does it)"
    if not (INTEROP_DIR / "node_modules" / "node-opcua-client").is_dir():
        return "node-opcua is not installed: run `make interop-deps` (npm ci in tests/interop)"
    return None


class NodeOpcuaClient:
    """`node tests/interop/client.js <endpoint>` connected anonymously; stopped by `close`."""

    def __init__(self, endpoint: str, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = work_dir / "node-client.log"
        self._log = self.log_path.open("ab")
        env = {**os.environ, "INTEROP_PKI_DIR": str(work_dir / "pki")}
        self.proc = subprocess.Popen(
            ["node", str(CLIENT_JS), endpoint],
            cwd=INTEROP_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
        )
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._events_lock = threading.Lock()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            ready = self._answers.get(timeout=TIMEOUT_S)
        except queue.Empty:
            ready = {}
        if not ready.get("ready"):
            raise AssertionError(f"node-opcua client did not connect: {ready}\n{self.log_text()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if not line.startswith(PREFIX):
                self._log.write(raw)
                continue
            message = json.loads(line[len(PREFIX) :])
            if "event" in message:
                with self._events_lock:
                    self.events.append(message["event"])
            else:
                self._answers.put(message)
        self._answers.put({"id": None, "ok": False, "error": f"client exited with {self.proc.wait()}"})

    def log_text(self) -> str:
        """What the client logged (stderr and node-opcua's own lines)."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, op: str, **args: Any) -> Any:
        """Send one command; its result, or AssertionError with the client's error."""
        self._next_id += 1
        command = {"id": self._next_id, "op": op, **args}
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()
        try:
            answer = self._answers.get(timeout=TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"no answer to {command} within {TIMEOUT_S} s\n{self.log_text()}") from None
        if answer.get("id") != self._next_id or not answer.get("ok"):
            raise AssertionError(f"{op} failed: {answer.get('error', answer)}")
        return answer["result"]

    def poll(self, what: str, attempt: Callable[[], Any]) -> Any:
        """Repeat `attempt` (every 0.1 s, up to 60 s) until it returns a truthy value, which it returns."""
        deadline = time.monotonic() + TIMEOUT_S
        last_error: AssertionError | None = None
        while time.monotonic() < deadline:
            try:
                result = attempt()
            except AssertionError as exc:
                last_error = exc
            else:
                if result:
                    return result
            time.sleep(0.1)
        raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what} (last error: {last_error})")

    def wait_events(self, predicate: Callable[[list[dict[str, Any]]], bool], what: str) -> list[dict[str, Any]]:
        """The events received so far, once `predicate` holds for them (60 s at most)."""

        def snapshot() -> list[dict[str, Any]] | None:
            with self._events_lock:
                events = list(self.events)
            return events if predicate(events) else None

        result: list[dict[str, Any]] = self.poll(what, snapshot)
        return result

    def close(self) -> None:
        """End the client (stdin closed: it closes its session and exits); killed after 60 s."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        self._log.close()
