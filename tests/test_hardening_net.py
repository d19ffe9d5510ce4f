"""The gateway's network surfaces against a hostile network: many idle sockets (file descriptors,
slow-loris), big history answers, foreign Host names (DNS rebinding), password guessing and
unknown certificates on OPC UA. Real servers and clients on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import BadCertificateUntrusted, BadUserAccessDenied, UaError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench.bench_historian import synthetic_records
from cmm_twin.errors import ConfigError
from cmm_twin.gateway import web
from cmm_twin.gateway.config import load_config
from cmm_twin.gateway.limits import raise_open_file_limit
from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.sinks.historian.api import history_document, parse_history_params
from cmm_twin.gateway.sinks.historian.lineprotocol import HEALTH_MEASUREMENT, HealthSample
from cmm_twin.gateway.sinks.historian.sqlite import MAX_STREAMS, PAGE_ROWS, HistoryStore, SqliteHistorianSink
from cmm_twin.gateway.sinks.opcua.sink import LoginThrottle, OpcUaSettings, OpcUaSink, TrustList
from cmm_twin.gateway.sinks.page.feed import PageFeed
from cmm_twin.gateway.status import GatewayStatus
from cmm_twin.records import RecordBatch
from tests.gateway_harness import (
    HEADER,
    ROOT,
    GatewayProcess,
    csv_row,
    drop_file,
    free_port,
    gateway_config,
    running_gateway,
    wait_for,
)

DEADLINE_S = 60.0


# --------------------------------------------------------------------------- helpers


@asynccontextmanager
async def http_server(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[web.HttpServer, GatewayStatus]]:
    """The gateway's real HTTP app (with the live page) on 127.0.0.1, any free port."""
    status = GatewayStatus()
    app = web.build_app(status, GatewayMetrics(status), dict, [PageFeed(tmp_path / "quarantine")])
    server = web.HttpServer(app, "127.0.0.1", 0, **options)
    await server.start()
    try:
        yield server, status
    finally:
        await server.stop()


async def raw_request(port: int, request: bytes) -> bytes:
    """Send `request` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            return await reader.read()
    finally:
        writer.close()


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Wait until the server closes the connection (EOF or reset); False if it never does."""
    try:
        async with asyncio.timeout(DEADLINE_S):
            while await reader.read(1024):
                pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


# --------------------------------------------------------------------------- defect 3: descriptors


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"hard open-file limit {hard} < 1024")
    target = 1024 if hard == resource.RLIM_INFINITY else min(hard, 4096)

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, target))

    code = (
        "import resource\n"
        "from cmm_twin.gateway.limits import raise_open_file_limit\n"
        "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, preexec_fn=low_soft_limit, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == [f"({target},", f"{target})", f"({target},", f"{target})"]


def test_open_file_limit_never_fails_when_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(kind: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (64, 128))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert raise_open_file_limit() == (64, 128)


def limited_gateway(args: list[str], log_path: Path, soft: int, hard: int) -> GatewayProcess:
    """The real gateway with RLIMIT_NOFILE set to (soft, hard) before it starts (as preexec_fn would)."""
    launcher = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from cmm_twin.gateway.cli import main\n"
        "raise SystemExit(main())\n"
    )
    return GatewayProcess(args, log_path, script=["-c", launcher])


def gateway_args(tmp_path: Path) -> list[str]:
    return [
        "--data-dir", str(tmp_path / "data"),
        "--http", "127.0.0.1:0",
        "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
        "--settle-ms", "50",
    ]  # fmt: skip


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def open_file_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


@pytest.mark.chaos
def test_gateway_raises_its_soft_open_file_limit_at_start(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"hard open-file limit {hard} < 2048")
    gateway = limited_gateway(gateway_args(tmp_path), tmp_path / "gateway.log", 512, 2048)
    try:
        gateway.wait_ready()
        assert open_file_limits(gateway.proc.pid) == (2048, 2048)
    finally:
        assert gateway.stop() == 0


def slow_loris(port: int, count: int) -> list[socket.socket]:
    """`count` TCP connections to 127.0.0.1:`port`, each sending the start of a request and then
    nothing (the partial headers make the server take every connection, even one whose handshake
    overflowed its accept queue)."""
    sockets = []
    poller = select.poll()
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
        poller.register(sock, select.POLLOUT)
    by_fd = {sock.fileno(): sock for sock in sockets}
    deadline = time.monotonic() + DEADLINE_S
    while by_fd and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            poller.unregister(fd)
            with contextlib.suppress(OSError):  # already refused by the server
                by_fd.pop(fd).send(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
    assert not by_fd, f"{len(by_fd)} of {count} connections never completed"
    return sockets


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.chaos
def test_slow_loris_with_1100_idle_connections_does_not_kill_the_gateway(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:  # this test process holds the 1,100 client sockets
        if hard != resource.RLIM_INFINITY and hard < 1400:
            pytest.skip(f"this process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1400 if hard == resource.RLIM_INFINITY else hard, hard))
    # Soft and hard limit 1,024: the gateway cannot raise it, as on a host with the usual limits.
    gateway = limited_gateway(gateway_args(tmp_path), tmp_path / "gateway.log", 1024, 1024)
    sockets: list[socket.socket] = []
    try:
        port = gateway.wait_ready()
        sockets = slow_loris(port, 1100)
        # The gateway has taken what it will: its descriptors are exhausted, or it refuses connections.
        wait_until(
            lambda: (
                gateway.proc.poll() is not None
                or "refusing new ones" in gateway.log_text()
                or open_files(gateway.proc.pid) >= 1000
            ),
            "the flood to reach the gateway",
        )
        inbox = tmp_path / "data" / "inbox"
        drop_file(inbox, "after_the_flood.csv", HEADER + csv_row("P1") + csv_row("P2", feature="length_y"))
        deadline = time.monotonic() + DEADLINE_S
        health: dict[str, Any] = {}
        while health.get("files_processed") != 1:
            if gateway.proc.poll() is not None:
                raise AssertionError(
                    f"the gateway died (exit {gateway.proc.returncode}):\n{gateway.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"the file was not processed; last /health {health}")
            try:  # a fresh connection: refused (503) while the idle ones hold every slot
                health = gateway.get_json("/health")
            except (OSError, json.JSONDecodeError, urllib.error.URLError):
                time.sleep(0.5)
        assert health["rows_in"] == 2
        assert gateway.proc.poll() is None
        assert (tmp_path / "data" / "archive" / "after_the_flood.csv").exists()
    finally:
        for sock in sockets:
            sock.close()
        code = gateway.stop()
    log = gateway.log_text()
    assert code == 0, log[-3000:]
    assert "refusing new ones" in log
    assert log.count("refusing new ones") <= 2  # at most once a minute
    assert "Too many open files" not in log


async def test_connections_beyond_the_cap_get_503_and_are_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cmm_twin.gateway.web")
    async with http_server(tmp_path, max_connections=3) as (server, _):
        assert server.gate is not None
        gate = server.gate
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        await wait_for(lambda: gate.active == 3, DEADLINE_S, "3 connections admitted")
        for _ in range(4):
            status, body = status_and_body(
                await raw_request(server.port, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            )
            assert (status, body) == (503, b"too many open connections\n")
        assert gate.refused == 4
        assert gate.active == 3
        warnings = [r.getMessage() for r in caplog.records if "refusing new ones" in r.getMessage()]
        assert len(warnings) == 1  # once a minute, not once a connection
        for _, writer in idle:
            writer.close()
        await wait_for(lambda: gate.active == 0, DEADLINE_S, "the idle connections to end")
        status, body = status_and_body(
            await raw_request(server.port, b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        )
        assert status == 200
        assert gate.peak == 3


async def test_slow_headers_are_cut_but_an_event_stream_outlives_the_header_timeout(tmp_path: Path) -> None:
    timeout_s = 0.5
    async with http_server(tmp_path, header_timeout_s=timeout_s) as (server, status):
        # Slow-loris: request headers trickled a byte at a time, never completed.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        trickle_done = asyncio.Event()

        async def trickle() -> None:
            try:
                while not trickle_done.is_set():
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(timeout_s / 5)
            except ConnectionError:
                pass

        trickling = asyncio.create_task(trickle())
        assert await closed_by_server(reader), "a connection without complete headers was never closed"
        trickle_done.set()
        await trickling
        writer.close()
        # An idle connection that sent nothing at all is closed too.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed_by_server(reader)
        writer.close()

        # The page's event stream is a request in progress: the header timeout never cuts it.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.port}/api/v1/events") as sse,
        ):
            assert sse.status == 200
            seen = b""
            while b"event: snapshot" not in seen:
                seen += await sse.content.readline()
            await asyncio.sleep(6 * timeout_s)
            status.files_processed = 7  # a change: the stream sends a health event within a tick
            seen = b""
            async with asyncio.timeout(DEADLINE_S):
                while b'"files_processed":7' not in seen:
                    line = await sse.content.readline()
                    assert line, "the event stream was closed"
                    seen += line


# --------------------------------------------------------------------------- DNS rebinding


async def test_foreign_host_names_get_421(tmp_path: Path) -> None:
    async with http_server(tmp_path, allowed_hosts=["proxy.example"]) as (server, _):
        port = server.port

        async def status_for(host: str) -> tuple[int, bytes]:
            request = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            return status_and_body(await raw_request(port, request))

        status, body = await status_for("evil.example")
        assert status == 421
        assert "evil.example" in json.loads(body)["error"]
        for host in ("evil.example:8080", "localhost.evil.example", "127.0.0.1.evil.example", "[::1].evil"):
            assert (await status_for(host))[0] == 421, host
        for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST."):
            assert (await status_for(host))[0] == 200, host
        assert (await status_for("proxy.example"))[0] == 200
        assert (await status_for(f"Proxy.Example:{port}"))[0] == 200
        # Every route is covered, not only /health.
        answer = await raw_request(
            port, b"GET /api/v1/events HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        )
        assert status_and_body(answer)[0] == 421


def test_host_check_of_a_wildcard_bind() -> None:
    check = web.HostCheck("0.0.0.0", ["scada.plant.example"])
    assert check.allows("192.168.1.50:8080")  # an address cannot be rebound
    assert check.allows(f"{socket.gethostname()}:8080")
    assert check.allows("scada.plant.example")
    assert check.allows(None)  # no Host header: not a browser
    assert not check.allows("evil.example")
    one = web.HostCheck("192.168.1.50")
    assert one.allows("192.168.1.50:8080") and one.allows("localhost")
    assert not one.allows("192.168.1.51") and not one.allows(socket.gethostname() + ".evil")


def test_allowed_hosts_and_trust_dir_options(tmp_path: Path) -> None:
    config = load_config(["--http-allowed-hosts", " Proxy.Example, gw.local ,"], environ={})
    assert config.http_allowed_hosts == ("proxy.example", "gw.local")
    assert load_config([], environ={}).http_allowed_hosts is None
    with pytest.raises(ConfigError, match="--opcua-trust-dir"):
        load_config(["--opcua-trust-dir", str(tmp_path / "missing")], environ={})
    assert load_config([], environ={"CMM_OPCUA_TRUST_DIR": str(tmp_path)}).options["opcua_trust_dir"] == tmp_path


# --------------------------------------------------------------------------- history under load


def history_batch(rows: int, base_ns: int) -> RecordBatch:
    """`rows` points, three machines sharing each timestamp (ties on the time key); every fifth
    without an air temperature."""
    i = np.arange(rows)
    stamps = (base_ns + (i // 3) * 1_000_000).astype(np.int64)
    return synthetic_records(stamps, np.where(i % 5 == 0, np.nan, 21.5))


async def test_concurrent_history_answers_are_streamed_complete_and_capped(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, historian="sqlite", health_interval_s=3600.0)
    base_ns = (time.time_ns() // 10**9 - 1800) * 10**9
    store = HistoryStore(config.history_path)
    store.write(
        history_batch(12_000, base_ns),
        [HealthSample(base_ns + k * 10**9, k, False, True, k, 0) for k in range(50)],
    )
    store.close()
    # The window ends long before now: the gateway's own health samples (taken now) stay out of it.
    since, until = str(base_ns // 10**9), str(base_ns // 10**9 + 600)
    queries: list[dict[str, str]] = [
        {"since": since, "until": until, "limit": "100000"},  # everything, several pages
        {"since": since, "until": until, "limit": "5000"},  # truncated; the boundary splits a tie
        {"since": since, "until": until, "limit": "4001", "fields": "measured_mm,air_temp_c"},
        {"since": since, "until": until, "machine_id": "CMM-02", "limit": "2500"},
        {"since": since, "until": until, "machine_id": "nobody"},
        {"since": since, "until": until, "measurement": HEALTH_MEASUREMENT, "limit": "7"},
    ] * 3
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as session:
        historian = gateway.sink("historian")
        assert isinstance(historian, SqliteHistorianSink)
        url = f"http://127.0.0.1:{gateway.http_port}/api/v1/history"

        async def fetch(params: dict[str, str]) -> Any:
            async with session.get(url, params=params) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/json; charset=utf-8"
                return json.loads(await response.read())

        answers = await asyncio.gather(*(fetch(params) for params in queries))
        reference = HistoryStore(config.history_path)
        try:
            for params, answer in zip(queries, answers, strict=True):
                q = parse_history_params(params)
                assert answer == json.loads(json.dumps(history_document(q, reference.query(q)))), params
        finally:
            reference.close()
        streams = historian.streams
        assert 1 <= streams.peak <= MAX_STREAMS
        assert streams.active == 0
    assert answers[0]["count"] == 12_000 and answers[0]["truncated"] is False
    assert answers[0]["count"] > PAGE_ROWS  # streamed in several pages
    assert answers[1]["count"] == 5000 and answers[1]["truncated"] is True
    assert answers[4]["count"] == 0 and answers[4]["points"] == []
    times = [p["time"] for p in answers[0]["points"]]
    assert times == sorted(times)


# --------------------------------------------------------------------------- OPC UA


async def client_cert(directory: Path, uri: str = "urn:cmm-twin:test-client") -> tuple[Path, Path]:
    client = Client("opc.tcp://127.0.0.1:1/")
    client.application_uri = uri
    return await client.setup_self_signed_certificate(directory / "client_key.pem", directory / "client_cert.der")


async def login(url: str, server_cert: Path, cert: Path, key: Path, user: str, password: str) -> None:
    """Connect over Basic256Sha256 SignAndEncrypt with user name and password, then disconnect."""
    client = Client(url, timeout=DEADLINE_S)
    client.application_uri = "urn:cmm-twin:test-client"
    client.set_user(user)
    client.set_password(password)
    await client.set_security(
        SecurityPolicyBasic256Sha256, str(cert), str(key), server_certificate=str(server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )  # fmt: skip
    await client.connect()
    await client.disconnect()


@asynccontextmanager
async def opcua_sink(settings: OpcUaSettings) -> AsyncIterator[OpcUaSink]:
    sink = OpcUaSink(settings)
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


async def test_repeated_wrong_passwords_are_throttled_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cmm_twin.gateway.sinks.opcua")
    settings = OpcUaSettings(
        endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
        state_dir=tmp_path / "state",
        username="operator",
        password="s3cret!",
    )
    cert, key = await client_cert(tmp_path)
    async with opcua_sink(settings) as sink:
        server_cert = tmp_path / "state" / "opcua" / "server_cert.der"
        throttle = sink.login_throttle
        await login(sink.endpoint_url, server_cert, cert, key, "operator", "s3cret!")
        forged = "intruder\nWARNING fake line"
        for attempt in range(throttle.max_failures):
            with pytest.raises(BadUserAccessDenied):
                await login(sink.endpoint_url, server_cert, cert, key, forged, f"guess{attempt}")
        assert throttle.failures_total == throttle.max_failures
        assert throttle.throttled("127.0.0.1")
        # Throttled: new sessions wait, logins are refused unchecked (even the right password).
        for _ in range(2):
            with pytest.raises(BadUserAccessDenied):
                await login(sink.endpoint_url, server_cert, cert, key, "operator", "s3cret!")
        assert throttle.refused_total == 2
        assert throttle.delayed_total >= 2
        assert throttle.failures_total == throttle.max_failures  # refusals are not checked, not counted
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("cmm_twin.gateway.sinks.opcua") and r.levelno == logging.WARNING
    ]
    refused = [w for w in warnings if "login refused from 127.0.0.1" in w]
    burst = [w for w in warnings if "failed logins from 127.0.0.1" in w]
    assert len(refused) == 1 and len(burst) == 1, warnings
    assert repr(forged) in refused[0] and "\n" not in refused[0] and "\n" not in burst[0]


def test_login_throttle_window_reset_and_bounded_memory() -> None:
    now = [1000.0]
    throttle = LoginThrottle(max_failures=3, window_s=60.0, max_clients=4, clock=lambda: now[0])
    for _ in range(3):
        throttle.failed("10.0.0.1", "x", "wrong")
    assert throttle.throttled("10.0.0.1") and not throttle.throttled("10.0.0.2")
    now[0] += 61.0
    assert not throttle.throttled("10.0.0.1")  # the failures aged out of the window
    throttle.failed("10.0.0.1", "x", "wrong")
    throttle.succeeded("10.0.0.1")
    assert throttle.clients == 0
    for k in range(100):
        throttle.failed(f"10.0.1.{k}", None, "wrong")
    assert throttle.clients == 4
    assert throttle.failures_total == 104


def write_pem(der_path: Path, pem_path: Path) -> None:
    cert = x509.load_der_x509_certificate(der_path.read_bytes())
    pem_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


async def test_only_client_certificates_in_the_trust_dir_are_accepted(tmp_path: Path) -> None:
    trusted_cert, trusted_key = await client_cert(tmp_path / "trusted")
    other_cert, other_key = await client_cert(tmp_path / "other")
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    write_pem(trusted_cert, trust_dir / "line-scada.pem")
    (trust_dir / "notes.txt").write_text("not a certificate")
    settings = OpcUaSettings(
        endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
        state_dir=tmp_path / "state",
        username="operator",
        password="s3cret!",
        trust_dir=trust_dir,
    )
    async with opcua_sink(settings) as sink:
        assert sink.trust is not None and len(sink.trust.fingerprints) == 1
        server_cert = tmp_path / "state" / "opcua" / "server_cert.der"
        with pytest.raises((BadCertificateUntrusted, UaError)):
            await login(sink.endpoint_url, server_cert, other_cert, other_key, "operator", "s3cret!")
        await login(sink.endpoint_url, server_cert, trusted_cert, trusted_key, "operator", "s3cret!")
        assert sink.login_throttle.failures_total == 1
    trust = TrustList(trust_dir)
    assert trust.load() == 1
    assert trust.trusts(trusted_cert.read_bytes())
    assert not trust.trusts(other_cert.read_bytes())
    assert not trust.trusts(b"garbage")
