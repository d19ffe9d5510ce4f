"""OpcUaSink against a real asyncua server and a real asyncua client on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import socket
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import BadIdentityTokenRejected, BadUserAccessDenied, UaError, UaStatusCodeError
from cryptography import x509

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.sinks import opcua as opcua_plugin
from cmm_twin.gateway.sinks.base import Delivered, SinkStartError
from cmm_twin.gateway.sinks.deferred import DeferredSink
from cmm_twin.gateway.sinks.opcua import security as opcua_security
from cmm_twin.gateway.sinks.opcua.address_space import NAMESPACE_URI, machine_node_id, unece_unit_id
from cmm_twin.gateway.sinks.opcua.certificates import APPLICATION_URI
from cmm_twin.gateway.sinks.opcua.security import (
    anonymous_allowed,
    plan_security,
    select_identity_tokens,
    select_policies,
)
from cmm_twin.gateway.sinks.opcua.settings import DEFAULT_ENDPOINT, OpcUaSettings
from cmm_twin.gateway.sinks.opcua.sink import OpcUaSink, OpcUaStartError
from cmm_twin.gateway.status import GatewayStatus, SinkState, SinkStatus
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

TIMEOUT_S = 60.0
"""A hang guard, not a speed budget: key generation and encrypted handshakes are slow on a busy machine."""
T0_NS = 1_767_225_600_123_456_000  # 2026-01-01T00:00:00.123456Z
NONE_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_batch(rows: list[tuple[str, int, float, str]], **columns: Any) -> RecordBatch:
    """A batch from (machine_id, timestamp_ns, compensated_mm, verdict) rows; other fields derived
    unless `columns` gives them: +-0.01 mm, and the newer columns as a record spooled before them
    reads them (mm, gateway, csv, no file name), so spool migration tests can compare."""
    n = len(rows)
    stamps = np.array([r[1] for r in rows], dtype=np.int64)
    compensated = np.array([r[2] for r in rows], dtype=np.float64)
    codes = {name: i for i, name in enumerate(VERDICT_NAMES.tolist())}
    return RecordBatch(
        measurement_id=[f"m-{i}" for i in range(n)],
        timestamp=[dt.datetime.fromtimestamp(r[1] / 1e9, dt.UTC).isoformat() for r in rows],
        timestamp_ns=stamps,
        machine_id=[r[0] for r in rows],
        part_id=[f"P{i:04d}" for i in range(n)],
        feature=columns.pop("feature", [f"length_{i}" for i in range(n)]),
        material=["AL6061"] * n,
        cte_per_k=np.full(n, 23.6e-6),
        nominal_mm=np.full(n, 100.0),
        tolerance_mm=columns.pop("tolerance_mm", np.full(n, 0.01)),
        lower_tol_mm=columns.pop("lower_tol_mm", np.full(n, -0.01)),
        upper_tol_mm=columns.pop("upper_tol_mm", np.full(n, 0.01)),
        measured_mm=compensated + 0.0118,
        part_temp_c=np.full(n, 25.0) + np.arange(n),
        air_temp_c=np.full(n, np.nan),
        scale_temp_c=np.full(n, np.nan),
        compensated_mm=compensated,
        correction_um=np.full(n, -11.8),
        deviation_um=(compensated - 100.0) * 1000.0,
        uncertainty_um=np.full(n, 2.84),
        verdict=np.array([codes[r[3]] for r in rows], dtype=np.int8),
        flags=columns.pop("flags", np.zeros(n, dtype=np.int32)),
        unit=columns.pop("unit", ["mm"] * n),
        compensation=columns.pop("compensation", np.zeros(n, dtype=np.int8)),
        source_format=columns.pop("source_format", ["csv"] * n),
        source_file=columns.pop("source_file", [""] * n),
        file_rows=np.zeros(n, dtype=np.int32),
        **columns,
    )


def value_of(data_value: ua.DataValue) -> Any:
    assert data_value.Value is not None
    return data_value.Value.Value


def as_datetime(ns: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)


@asynccontextmanager
async def running(settings: OpcUaSettings) -> AsyncIterator[OpcUaSink]:
    sink = OpcUaSink(settings)
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


@asynccontextmanager
async def connected(url: str, **security: Any) -> AsyncIterator[Client]:
    client = Client(url, timeout=TIMEOUT_S)
    if "user" in security:
        client.set_user(security["user"])
        client.set_password(security["password"])
    if "cert" in security:
        client.application_uri = "urn:cmm-twin:test-client"
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            security["cert"],
            security["key"],
            server_certificate=security["server_cert"],
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


class Collector:
    """Subscription handler putting every data change on a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Any, ua.DataValue]] = asyncio.Queue()

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.queue.put_nowait((val, data.monitored_item.Value))


async def client_cert(client_dir: Path) -> tuple[Path, Path]:
    client = Client("opc.tcp://127.0.0.1:1/")
    client.application_uri = "urn:cmm-twin:test-client"
    return await client.setup_self_signed_certificate(client_dir / "client_key.pem", client_dir / "client_cert.der")


# ---------------------------------------------------------------- pure functions and settings


def test_unece_unit_ids() -> None:
    assert unece_unit_id("MMT") == 5066068
    assert unece_unit_id("CEL") == 4408652
    assert unece_unit_id("4H") == 13384
    with pytest.raises(ValueError):
        unece_unit_id("ABCD")


def test_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        OpcUaSettings(endpoint="http://127.0.0.1:4840/", state_dir=tmp_path)
    assert err.value.key == "--opcua-endpoint"
    for bad in ("opc.tcp://127.0.0.1/x", "opc.tcp://:4840/x", "opc.tcp://u:p@127.0.0.1:4840/", "opc.tcp://h:99999/"):
        with pytest.raises(ConfigError, match="--opcua-endpoint"):
            OpcUaSettings(endpoint=bad, state_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        OpcUaSettings.from_env(DEFAULT_ENDPOINT, False, tmp_path, environ={"OPCUA_USER": "op"})
    assert err.value.key == "OPCUA_PASSWORD"
    with pytest.raises(ConfigError) as err:
        OpcUaSettings.from_env(DEFAULT_ENDPOINT, False, tmp_path, environ={"OPCUA_PASSWORD": "pw"})
    assert err.value.key == "OPCUA_USER"
    settings = OpcUaSettings.from_env(
        "opc.tcp://[::1]:4841/x", True, tmp_path, environ={"OPCUA_USER": "op", "OPCUA_PASSWORD": "s3cret"}
    )
    assert (settings.username, settings.password, settings.allow_anonymous) == ("op", "s3cret", True)
    assert "s3cret" not in repr(settings)


def test_plugin_builds_the_sink_from_the_configuration(tmp_path: Path) -> None:
    assert opcua_plugin.PLUGIN.name == "opcua"
    assert opcua_plugin.build(GatewayConfig(data_dir=tmp_path, sinks_off=frozenset({"opcua"})), {}) is None
    config = GatewayConfig(
        data_dir=tmp_path, options={"opcua_endpoint": "opc.tcp://10.0.0.5:4841/x", "opcua_trust_dir": tmp_path}
    )
    deferred = opcua_plugin.build(config, {"OPCUA_USER": "op", "OPCUA_PASSWORD": "pw"})
    assert isinstance(deferred, DeferredSink) and deferred.target is None  # asyncua waits for the first open
    sink = deferred.build()
    assert isinstance(sink, OpcUaSink) and deferred.target is sink
    assert sink.settings.endpoint == "opc.tcp://10.0.0.5:4841/x"
    assert (sink.settings.username, sink.settings.password) == ("op", "pw")
    assert sink.settings.state_dir == config.state_dir
    assert sink.trust is not None and sink.trust.directory == tmp_path
    assert sink.describe().startswith("opc.tcp://10.0.0.5:4841/x (OPC UA opc.tcp://10.0.0.5:4841/x: policies")
    with pytest.raises(ConfigError, match="OPCUA_PASSWORD"):
        opcua_plugin.build(config, {"OPCUA_USER": "op"})


def test_anonymous_only_on_loopback_or_when_allowed() -> None:
    for endpoint in (
        "opc.tcp://127.0.0.1:4840/cmm-twin/",
        "opc.tcp://127.3.2.1:4840/",
        "opc.tcp://localhost:4840/",
        "opc.tcp://[::1]:4840/",
    ):
        assert anonymous_allowed(endpoint, False)[0], endpoint
    for endpoint in ("opc.tcp://0.0.0.0:4840/", "opc.tcp://192.168.1.20:4840/", "opc.tcp://cmm-gw.plant:4840/"):
        allowed, reason = anonymous_allowed(endpoint, False)
        assert not allowed
        assert reason == f"endpoint {endpoint} is not loopback"
        assert anonymous_allowed(endpoint, True) == (True, "--opcua-allow-anonymous is set")

    signed = [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    assert select_policies(False) == signed
    assert select_policies(True) == [ua.SecurityPolicyType.NoSecurity, *signed]
    assert select_identity_tokens(False, True) == [ua.UserNameIdentityToken]
    assert select_identity_tokens(False, False) == [ua.UserNameIdentityToken]
    assert select_identity_tokens(True, False) == [ua.AnonymousIdentityToken]
    assert select_identity_tokens(True, True) == [ua.AnonymousIdentityToken, ua.UserNameIdentityToken]

    plan = plan_security(OpcUaSettings(endpoint="opc.tcp://10.0.0.5:4840/", state_dir=Path("unused")))
    assert not plan.anonymous
    assert ua.SecurityPolicyType.NoSecurity not in plan.policies
    assert ua.AnonymousIdentityToken not in plan.tokens


async def test_non_loopback_warns_and_fails_cleanly_when_address_is_not_local(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 192.0.2.1 (TEST-NET-1) is never a local address: binding fails locally, nothing is sent anywhere.
    endpoint = f"opc.tcp://192.0.2.1:{free_port()}/cmm-twin/"
    sink = OpcUaSink(OpcUaSettings(endpoint=endpoint, state_dir=tmp_path))
    caplog.set_level(logging.WARNING, logger="cmm_twin.gateway.sinks.opcua.sink")
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(OpcUaStartError) as err:
            await sink.open()
        await sink.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "cmm_twin.gateway.sinks.opcua.sink"]
    assert (
        f"anonymous access and the None policy are off: endpoint {endpoint} is not loopback; "
        "pass --opcua-allow-anonymous to allow them"
    ) in messages
    assert any("no OPC UA client can log in" in m for m in messages)
    assert endpoint in str(err.value)
    assert "off (endpoint" in sink.security_summary()


# ---------------------------------------------------------------- real server and client


async def test_latest_row_per_machine_reaches_subscriber(tmp_path: Path) -> None:
    settings = OpcUaSettings(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", state_dir=tmp_path)
    async with asyncio.timeout(TIMEOUT_S), running(settings) as sink, connected(sink.endpoint_url) as client:
        first = make_batch(
            [
                ("CMM-01", T0_NS, 100.001, "PASS"),
                ("CMM-02", T0_NS + 1000, 100.002, "PASS"),
                ("CMM-01", T0_NS + 2000, 100.003, "UNCERTAIN"),
            ]
        )
        assert await sink.write(first) == Delivered()

        ns = await client.get_namespace_index(NAMESPACE_URI)
        assert ns == sink.namespace_index
        node = await client.nodes.objects.get_child([f"{ns}:CMM", f"{ns}:CMM-01", f"{ns}:CompensatedLength"])
        assert node.nodeid == ua.NodeId.from_string(f"ns={ns};s=CMM/CMM-01/CompensatedLength")

        collector = Collector()
        subscription = await client.create_subscription(20, collector)
        await subscription.subscribe_data_change(node)
        value, _ = await collector.queue.get()  # the initial notification: the last row of the first batch
        assert value == 100.003

        second = make_batch(
            [
                ("CMM-01", T0_NS + 10_000_000, 100.010, "PASS"),
                ("CMM-02", T0_NS + 11_000_000, 100.020, "FAIL"),
                ("CMM-01", T0_NS + 12_345_678, 100.0123456789, "FAIL"),
            ]
        )
        assert await sink.write(second) == Delivered()
        value, data_value = await collector.queue.get()
        assert value == 100.0123456789
        assert data_value.SourceTimestamp == as_datetime(T0_NS + 12_345_678)
        server_time: dt.datetime | None = data_value.ServerTimestamp
        assert server_time is not None
        assert abs(server_time - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)
        await subscription.delete()

        units = await (await node.get_child("0:EngineeringUnits")).read_value()
        assert units.UnitId == 5066068
        assert units.DisplayName.Text == "mm"
        assert units.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
        machine = f"ns={ns};s=CMM/CMM-01"
        temperature_units = await client.get_node(f"{machine}/PartTemperature/EngineeringUnits").read_value()
        assert temperature_units.UnitId == 4408652
        assert await client.get_node(f"{machine}/Verdict").read_value() == "FAIL"
        assert await client.get_node(f"{machine}/PartId").read_value() == "P0002"
        assert await client.get_node(f"{machine}/Deviation").read_value() == pytest.approx(12.3456789)
        assert (await client.get_node(f"{machine}/Deviation/EngineeringUnits").read_value()).UnitId == 13384
        assert await client.get_node(f"{machine}/PartTemperature").read_value() == 27.0
        assert await client.get_node(f"ns={ns};s=CMM/CMM-02/Verdict").read_value() == "FAIL"
        assert await client.get_node(f"ns={ns};s=CMM/CMM-02/CompensatedLength").read_value() == 100.020
        with pytest.raises(UaStatusCodeError):  # read-only tags
            await client.get_node(f"{machine}/Verdict").write_value("PASS")


async def test_limits_unit_compensation_and_source_format_are_published(tmp_path: Path) -> None:
    settings = OpcUaSettings(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", state_dir=tmp_path)
    nan = float("nan")
    async with asyncio.timeout(TIMEOUT_S), running(settings) as sink, connected(sink.endpoint_url) as client:
        batch = make_batch(
            [
                ("CMM-01", T0_NS, 100.001, "PASS"),  # +-0.01 mm from a CSV file
                ("CMM-02", T0_NS + 1000, 89.98, "UNDEFINED"),  # an angle without any limit
                ("CMM-03", T0_NS + 2000, 0.004, "PASS"),  # a form deviation with an upper limit only
            ],
            tolerance_mm=np.array([0.01, nan, nan]),
            lower_tol_mm=np.array([-0.01, nan, nan]),
            upper_tol_mm=np.array([0.01, nan, 0.005]),
            unit=["mm", "deg", "mm"],
            compensation=np.array([0, 2, 1], dtype=np.int8),
            source_format=["csv", "qdas", "calypso"],
        )
        assert await sink.write(batch) == Delivered()
        ns = await client.get_namespace_index(NAMESPACE_URI)

        async def read(machine: str, name: str) -> ua.DataValue:
            data_value: ua.DataValue = await client.get_node(f"ns={ns};s=CMM/{machine}/{name}").read_data_value()
            assert data_value.StatusCode is not None and data_value.StatusCode.is_good()  # also "no limit"
            return data_value

        expected = {
            "CMM-01": ("mm", "gateway", "csv", -0.01, 0.01, "PASS"),
            "CMM-02": ("deg", "none", "qdas", nan, nan, "UNDEFINED"),
            "CMM-03": ("mm", "source", "calypso", nan, 0.005, "PASS"),
        }
        names = ("Unit", "Compensation", "SourceFormat", "LowerTolerance", "UpperTolerance", "Verdict")
        for machine, values in expected.items():
            got = [value_of(await read(machine, name)) for name in names]
            assert got[:3] + got[5:] == [*values[:3], values[5]], machine
            for value, want in zip(got[3:5], values[3:5], strict=True):
                assert (math.isnan(value) and math.isnan(want)) or value == want, (machine, value, want)
        units = await client.get_node(f"ns={ns};s=CMM/CMM-03/UpperTolerance/EngineeringUnits").read_value()
        assert (units.UnitId, units.DisplayName.Text) == (5066068, "mm")
        stamp = (await read("CMM-03", "UpperTolerance")).SourceTimestamp
        assert stamp == as_datetime(T0_NS + 2000)


async def test_gateway_object_shows_the_newest_health_sample(tmp_path: Path) -> None:
    settings = OpcUaSettings(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", state_dir=tmp_path)
    sink = OpcUaSink(settings)
    assert sink.health_interval_s == 1.0
    status = GatewayStatus(
        files_processed=3,
        rows_rejected=2,
        sinks={"mes": SinkStatus(state=SinkState.CONNECTED, buffer_depth=5, oldest_age_s=12.34)},
    )
    assert await sink.write_health([GatewayHealth.of(status)]) == Delivered()  # not open: nothing to do
    async with asyncio.timeout(TIMEOUT_S), running(settings) as sink, connected(sink.endpoint_url) as client:
        assert sink.describe() == f"{sink.endpoint_url} ({sink.security_summary()})"
        older = GatewayHealth.of(GatewayStatus(files_processed=1))
        assert await sink.write_health([older, GatewayHealth.of(status)]) == Delivered()
        ns = await client.get_namespace_index(NAMESPACE_URI)
        gateway = await client.nodes.objects.get_child(f"{ns}:Gateway")

        async def read(name: str) -> ua.DataValue:
            node = await gateway.get_child(f"{ns}:{name}")
            assert node.nodeid == ua.NodeId.from_string(f"ns={ns};s=Gateway/{name}")
            data_value: ua.DataValue = await node.read_data_value()
            return data_value

        values = {name: value_of(await read(name)) for name in ("FilesProcessed", "RowsRejected", "BufferDepth")}
        assert values == {"FilesProcessed": 3, "RowsRejected": 2, "BufferDepth": 5}
        assert value_of(await read("MesConnected")) is True
        assert value_of(await read("HistorianConnected")) is False
        assert value_of(await read("BufferOldestAge")) == 12.3

        before = await read("FilesProcessed")
        await sink.write_health([GatewayHealth.of(status)])  # nothing changed: nothing written
        assert (await read("FilesProcessed")).ServerTimestamp == before.ServerTimestamp
        status.files_processed = 4
        status.sinks["mes"].state = SinkState.BUFFERING
        assert await sink.write_health([GatewayHealth.of(status)]) == Delivered()
        assert value_of(await read("FilesProcessed")) == 4
        assert value_of(await read("MesConnected")) is False


async def test_username_over_encrypted_channel_and_certificate_reuse(tmp_path: Path) -> None:
    port = free_port()
    state_dir = tmp_path / "state"
    settings = OpcUaSettings(
        endpoint=f"opc.tcp://127.0.0.1:{port}/cmm-twin/", state_dir=state_dir, username="operator", password="s3cret!"
    )
    cert, key = await client_cert(tmp_path / "client")
    server_cert = state_dir / "opcua" / "server_cert.der"
    security = {"cert": cert, "key": key, "server_cert": server_cert}
    async with asyncio.timeout(TIMEOUT_S):
        async with running(settings) as sink:
            first_bytes = server_cert.read_bytes()
            key_mode = stat.S_IMODE((state_dir / "opcua" / "server_key.pem").stat().st_mode)
            assert key_mode == 0o600
            summary = sink.security_summary()
            assert "Basic256Sha256/SignAndEncrypt" in summary
            assert "user 'operator'" in summary
            assert "s3cret" not in summary

            async with connected(sink.endpoint_url, user="operator", password="s3cret!", **security) as client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                assert await client.get_node(f"ns={ns};s=Gateway/BufferDepth").read_value() == 0
                assert client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt

            with pytest.raises(BadUserAccessDenied):
                async with connected(sink.endpoint_url, user="operator", password="wrong", **security):
                    pass
            with pytest.raises(BadUserAccessDenied):
                async with connected(sink.endpoint_url, user="intruder", password="s3cret!", **security):
                    pass

        async with running(settings) as sink:
            assert server_cert.read_bytes() == first_bytes
            endpoints = await sink._require_server().get_endpoints()
            assert {e.ServerCertificate for e in endpoints} == {first_bytes}

    parsed = x509.load_der_x509_certificate(first_bytes)
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert APPLICATION_URI in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert parsed.public_key().key_size == 2048  # type: ignore[union-attr]
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert dt.timedelta(days=3600) < lifetime < dt.timedelta(days=3700)


async def test_without_anonymous_no_none_policy_and_no_anonymous_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real non-loopback bind is not possible here: treat 127.0.0.1 as if it were not loopback.
    monkeypatch.setattr(
        opcua_security, "anonymous_allowed", lambda endpoint, allow: (False, f"endpoint {endpoint} is not loopback")
    )
    settings = OpcUaSettings(
        endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", state_dir=tmp_path, username="op", password="pw"
    )
    async with asyncio.timeout(TIMEOUT_S), running(settings) as sink:
        endpoints = await sink._require_server().get_endpoints()
        assert {e.SecurityPolicyUri for e in endpoints} == {SecurityPolicyBasic256Sha256.URI}
        assert {e.SecurityMode for e in endpoints} == {
            ua.MessageSecurityMode.Sign,
            ua.MessageSecurityMode.SignAndEncrypt,
        }
        token_types = {t.TokenType for e in endpoints for t in e.UserIdentityTokens}
        assert token_types == {ua.UserTokenType.UserName}
        with pytest.raises(UaError, match="No matching endpoints"):  # no None-policy endpoint to talk to
            async with connected(sink.endpoint_url):
                pass
        cert, key = await client_cert(tmp_path / "client")
        security = {"cert": cert, "key": key, "server_cert": tmp_path / "opcua" / "server_cert.der"}
        with pytest.raises(BadIdentityTokenRejected):  # encrypted channel, anonymous login
            async with connected(sink.endpoint_url, **security):
                pass
        async with connected(sink.endpoint_url, user="op", password="pw", **security) as client:
            assert await client.get_namespace_index(NAMESPACE_URI) == sink.namespace_index


async def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        endpoint = f"opc.tcp://127.0.0.1:{holder.getsockname()[1]}/cmm-twin/"
        sink = OpcUaSink(OpcUaSettings(endpoint=endpoint, state_dir=tmp_path))
        async with asyncio.timeout(TIMEOUT_S):
            with pytest.raises(OpcUaStartError) as err:
                await sink.open()
            await sink.close()
            await sink.close()
    message = str(err.value)
    assert isinstance(err.value, SinkStartError)  # the runner retries it, logged without a traceback
    assert endpoint in message
    assert "\n" not in message
    assert sink._space is None
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@pytest.mark.parametrize("probe", [True, False], ids=["probed", "bound-by-asyncua"])
async def test_open_succeeds_once_the_port_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: bool
) -> None:
    # The runner calls `open` again after a failure, on the same sink. Without the probe, the bind
    # fails inside asyncua, after the address space is built and the internal server started.
    if not probe:

        async def no_probe(self: OpcUaSink, endpoint: str) -> None:
            return None

        monkeypatch.setattr(OpcUaSink, "_check_bindable", no_probe)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    sink = OpcUaSink(OpcUaSettings(endpoint=f"opc.tcp://127.0.0.1:{port}/cmm-twin/", state_dir=tmp_path))
    async with asyncio.timeout(TIMEOUT_S):
        try:
            with pytest.raises(SinkStartError) as err:
                await sink.open()
        finally:
            holder.close()
        assert f"127.0.0.1:{port}" in str(err.value)
        assert sink._space is None
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

        await sink.open()
        try:
            assert await sink.write(make_batch([("CMM-07", T0_NS, 100.007, "PASS")])) == Delivered()
            async with connected(sink.endpoint_url) as client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                assert ns == sink.namespace_index
                assert await client.get_node(f"ns={ns};s=CMM/CMM-07/CompensatedLength").read_value() == 100.007
        finally:
            await sink.close()
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_large_batches_set_the_last_value_of_each_machine(tmp_path: Path) -> None:
    # The speed of this path is measured by `make bench` (gateway: one 1,000,000-row file through
    # OPC UA); the test checks the outcome only.
    n = 100_000
    machines = ["CMM-01", "CMM-02", "CMM-03"]
    rows = [(machines[i % 3], T0_NS + i * 1000, 100.0 + i * 1e-9, "PASS") for i in range(n)]
    batch = make_batch(rows, feature=[f"length_{i % 7}" for i in range(n)])
    settings = OpcUaSettings(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", state_dir=tmp_path)
    async with asyncio.timeout(TIMEOUT_S), running(settings) as sink:
        await sink.write(batch)  # creates the machines
        started = time.perf_counter()
        for _ in range(5):
            assert await sink.write(batch) == Delivered()
        per_batch = (time.perf_counter() - started) / 5
        logging.getLogger(__name__).info("write of %d rows: %.2f ms (%.0f rows/s)", n, per_batch * 1e3, n / per_batch)
        server = sink._require_server()
        last = server.read_attribute_value(machine_node_id(sink.namespace_index, "CMM-03", "CompensatedLength"))
        assert value_of(last) == 100.0 + (n - 2) * 1e-9  # row 99998 is the last of CMM-03
