"""The gateway's HTTP token (GATEWAY_TOKEN, docs/page.md): real gateway processes bound beyond loopback."""

from __future__ import annotations

import http.client
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_harness import ROOT, GatewayProcess, free_port

TOKEN = secrets.token_urlsafe(18)
"""A fresh token per run (no credential in the tree)."""


def gateway_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--data-dir", str(tmp_path / "data"), "--http", "0.0.0.0:0", "--historian", "none",
        "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", "--settle-ms", "50", *extra,
    ]  # fmt: skip


def request(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None, body: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:<port>; (status, headers, the first 64 kB of the body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read1(65536)
    finally:
        connection.close()


@pytest.fixture
def guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A gateway on 0.0.0.0 with GATEWAY_TOKEN set; yields its HTTP port."""
    monkeypatch.setenv("GATEWAY_TOKEN", TOKEN)
    gateway = GatewayProcess(gateway_args(tmp_path), tmp_path / "gateway.log")
    try:
        yield gateway.wait_ready(60)
    finally:
        assert gateway.stop() == 0, gateway.log_text()


def test_beyond_loopback_without_token_or_switch_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_TOKEN"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "cmm_edge_gateway.py"), *gateway_args(tmp_path)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--http: 0.0.0.0 is reachable from other hosts" in lines[0]
    assert "GATEWAY_TOKEN" in lines[0] and "--http-allow-anonymous" in lines[0]
    assert "Traceback" not in done.stderr


def test_every_route_but_health_needs_the_token(guarded: int) -> None:
    port = guarded
    assert request(port, "/health")[0] == 200  # probes carry no token
    for path in ("/metrics", "/api/v1/capability", "/api/v1/history", "/api/v1/events", "/api/v1/rejects"):
        status, headers, body = request(port, path)
        assert (status, headers.get("www-authenticate")) == (401, "Bearer"), (path, status, body)
        assert request(port, path, headers={"Authorization": "Bearer wrong"})[0] == 401, path
    assert request(port, "/static/app.js")[0] == 401
    assert request(port, "/api/v1/capability", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert request(port, "/metrics", headers={"Authorization": f"bearer {TOKEN}"})[0] == 200
    # The page without the token: a form asking for it, nothing of the page itself.
    status, headers, body = request(port, "/")
    assert status == 401 and b'<form method="post" action="/">' in body and b"app.js" not in body
    assert request(port, "/?token=wrong")[0] == 401


def test_the_page_logs_in_once_and_then_uses_a_cookie(guarded: int) -> None:
    port = guarded
    for method, path, body, headers in (
        ("GET", f"/?token={TOKEN}", None, {}),
        ("POST", "/", f"token={TOKEN}", {"Content-Type": "application/x-www-form-urlencoded"}),
    ):
        status, answer, _ = request(port, path, method, headers, body)
        assert (status, answer["location"]) == (303, "/"), (method, status)
        cookie = answer["set-cookie"]
        assert cookie.startswith("cmm_gateway_auth=") and TOKEN not in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        pair = cookie.split(";")[0]
        assert request(port, "/", headers={"Cookie": pair})[2].count(b"/static/app.js") == 1
        status, answer, first = request(port, "/api/v1/events", headers={"Cookie": pair})
        assert status == 200 and answer["content-type"].startswith("text/event-stream")
        assert first.startswith(b"retry: ")
    assert request(port, "/api/v1/capability", headers={"Cookie": "cmm_gateway_auth=forged"})[0] == 401


def test_allow_anonymous_serves_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    gateway = GatewayProcess(gateway_args(tmp_path, "--http-allow-anonymous"), tmp_path / "gateway.log")
    try:
        port = gateway.wait_ready(60)
        assert request(port, "/api/v1/capability")[0] == 200
        assert request(port, "/")[0] == 200
    finally:
        assert gateway.stop() == 0, gateway.log_text()
