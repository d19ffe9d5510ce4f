"""Interoperability: the real gateway (subprocess, real inbox files, embedded SQLite historian) seen
through an OPC UA stack that is not asyncua: node-opcua (tests/interop/, installed by `make
interop-deps`). The client browses by type, reads values, units and status codes, reads history in
pages, calls GetLatestResult, receives ResultReady events and is refused writes, anonymously on
loopback (the default security). Skipped, saying what to install, when node or node-opcua is missing."""

from __future__ import annotations

import math
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cmm_twin.formats.calypso import write_calypso
from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from cmm_twin.gateway.sources.inputs import InputSettings
from tests.gateway_harness import GatewayProcess, drop_file, free_port
from tests.interop.driver import NodeOpcuaClient, missing_client

pytestmark = pytest.mark.skipif(missing_client() is not None, reason=str(missing_client()))

CMM_URI = "urn:cmm-twin"
MACHINERY_URI = "http://opcfoundation.org/UA/Machinery/"
HEADER = "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,measured_mm,part_temp_c,unit\n"
HISTORY_ROWS = 300
HISTORY_PAGE = 50
MM, UM, DEGREE = 5066068, 13384, 17476  # UNECE MMT, 4H, DD as OPC UA UnitIds
HISTORY_FIELDS = "part_id,measured_mm,compensated_mm,deviation_um,uncertainty_um,part_temp_c,flags"
EXPECTED = {
    ("CMM-01", "length_x"),
    ("CMM-01", "length_y"),
    ("CMM-01", "angle_a"),
    ("CMM-02", "length_x"),
    ("CMM.03", "Bore"),
    ("CMM-02", "length_r"),
}
"""Every characteristic the shop's files measure (a dot in a machine id, never a slash)."""
REJECTED = ("CMM-02", "length_r")
"""Measured once, then its newest row is rejected: Bad."""


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row(moment: datetime, machine: str, part: str, feature: str, nominal: float, tol: float, measured: float,
        temp_c: float, unit: str = "mm") -> str:  # fmt: skip
    return f"{iso(moment)},{machine},{part},{feature},AL6061,{nominal},{tol},{measured},{temp_c},{unit}\n"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Shop:
    """A running gateway fed with the shop's files, and the node-opcua client connected to it."""

    gateway: GatewayProcess
    client: NodeOpcuaClient
    ns: int
    start: datetime
    inbox: Path
    characteristics: list[dict[str, Any]] | AssertionError | None = None
    """What `wait_for_characteristics` found (or why it failed), so later tests do not wait again."""

    def nid(self, text: str) -> str:
        return f"ns={self.ns};s={text}"

    def char(self, machine: str, feature: str, variable: str | None = None) -> str:
        tail = f"/{variable}" if variable else ""
        return self.nid(f"CMM/{machine}/Characteristics/{feature}{tail}")

    def history_api(self, machine: str, feature: str) -> list[dict[str, Any]]:
        """Every point of a characteristic from /api/v1/history (oldest first)."""
        query = urllib.parse.urlencode(
            {
                "machine_id": machine,
                "since": iso(self.start - timedelta(hours=1)),
                "until": iso(datetime.now(UTC) + timedelta(hours=1)),
                "fields": HISTORY_FIELDS,
            }
        )
        document = self.gateway.get_json(f"/api/v1/history?{query}")
        assert "points" in document, document
        return [p for p in document["points"] if p["feature"] == feature]


def start_gateway(work: Path, *extra: str) -> tuple[GatewayProcess, str]:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/"
    args = ["--data-dir", str(work), "--http", "127.0.0.1:0", "--opcua-endpoint", endpoint, "--settle-ms", "50", *extra]
    gateway = GatewayProcess(args, work / "gateway.log")
    gateway.wait_ready()
    return gateway, endpoint


def rejected_file(start: datetime) -> str:
    """A later part of CMM-02 whose length_r row is rejected (no number)."""
    moment = start + timedelta(seconds=HISTORY_ROWS + 1)
    return HEADER + row(moment, "CMM-02", "P-4", "length_r", 50.0, 0.010, 50.001, 20.0).replace("50.001", "n/a")


def shop_files(start: datetime) -> list[tuple[str, str | bytes]]:
    """The files of the shop, in drop order: 300 parts of CMM-01 length_x (the history), the other
    characteristics of CMM-01 (a length and an angle), an UNCERTAIN measurement on CMM-02 (9 µm from
    nominal, 1 µm inside the limit, at 20 °C) with a first value of its length_r (`rejected_file`
    follows), and a Calypso run of CMM.03 without any temperature (the assumed temperature)."""
    history = "".join(
        row(
            start + timedelta(seconds=i),
            "CMM-01",
            f"H{i:04d}",
            "length_x",
            100.0,
            0.010,
            100.0118 + (i % 7) * 1e-4,
            25.0,
        )
        for i in range(HISTORY_ROWS)
    )
    later = start + timedelta(seconds=HISTORY_ROWS)
    others = row(later, "CMM-01", "P-1", "length_y", 60.0, 0.02, 60.0071, 25.0) + row(
        later, "CMM-01", "P-1", "angle_a", 45.0, 0.1, 45.02, 25.0, "deg"
    )
    uncertain = row(later, "CMM-02", "P-2", "length_x", 100.0, 0.010, 100.009, 20.0)
    uncertain += row(later, "CMM-02", "P-2", "length_r", 50.0, 0.010, 50.001, 20.0)
    report = Report(
        "X-9",
        "",
        [ReportCharacteristic(1, "Bore", "mm", 10.0, -0.01, 0.01)],
        [ReportPart("P-3", "CMM.03", later, [ReportValue(10.0012)])],
    )
    calypso = write_calypso(report, InputSettings().zone)
    return [("history.csv", HEADER + history), ("others.csv", HEADER + others), ("uncertain.csv", HEADER + uncertain),
            *calypso]  # fmt: skip


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    work = tmp_path_factory.mktemp("interop")
    gateway, endpoint = start_gateway(work)
    client: NodeOpcuaClient | None = None
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        for name, content in shop_files(start):
            drop_file(work / "inbox", name, content)
        deadline = time.monotonic() + 60
        expected_rows = HISTORY_ROWS + 5
        while (h := gateway.get_json("/health"))["rows_in"] < expected_rows or h["buffer_depth"]:
            assert time.monotonic() < deadline, f"the shop's {expected_rows} rows did not arrive: {h}"
            time.sleep(0.05)
        drop_file(work / "inbox", "rejected.csv", rejected_file(start))  # after the valid row it follows
        while (h := gateway.get_json("/health"))["rows_rejected"] < 1:
            assert time.monotonic() < deadline, f"the rejected row was not seen: {h}"
            time.sleep(0.05)
        client = NodeOpcuaClient(endpoint, work / "node")
        yield Shop(gateway, client, client.request("namespace", uri=CMM_URI), start, work / "inbox")
    finally:
        if client is not None:
            client.close()
        assert gateway.stop() == 0, gateway.log_text()


def newest(shop: Shop, machine: str, feature: str) -> dict[str, Any]:
    points = shop.history_api(machine, feature)
    assert points, f"no history of {machine}/{feature}"
    return points[-1]


def wait_for_characteristics(shop: Shop) -> list[dict[str, Any]]:
    """The CharacteristicType instances under Objects/CMM once all the shop's are there (waited for
    once per gateway: a later call gives the same answer at once)."""
    if isinstance(shop.characteristics, AssertionError):
        raise shop.characteristics
    if shop.characteristics is not None:
        return shop.characteristics
    wanted = {shop.char(m, f) for m, f in EXPECTED}

    def attempt() -> list[dict[str, Any]] | None:
        found = shop.client.request("instances", type_uri=CMM_URI, type_name="CharacteristicType", root=shop.nid("CMM"))
        nodes: list[dict[str, Any]] = found["nodes"]
        return nodes if wanted <= {n["nodeId"] for n in nodes} else None

    try:
        found: list[dict[str, Any]] = shop.client.poll("every characteristic on OPC UA", attempt)
    except AssertionError as exc:
        shop.characteristics = exc
        raise
    shop.characteristics = found
    return found


# ---------------------------------------------------------------- browse by type


def test_characteristics_are_found_by_their_type(shop: Shop) -> None:
    nodes = wait_for_characteristics(shop)
    assert sorted(n["nodeId"] for n in nodes) == sorted(shop.char(m, f) for m, f in EXPECTED)
    assert {n["browseName"] for n in nodes} == {f"{shop.ns}:{f}" for _, f in EXPECTED}
    assert {n["parent"] for n in nodes} == {shop.nid(f"CMM/{m}/Characteristics") for m, _ in EXPECTED}


IDENTITY = """
[machines."CMM-01"]
manufacturer = "Test Metrology GmbH"
model = "Contura 7/10/6"
serial_number = "SN-4711"
product_instance_uri = "urn:test-metrology:cmm:SN-4711"
year_of_construction = 2019
"""


def test_machines_are_found_by_machine_identification_type(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(IDENTITY)
    gateway, endpoint = start_gateway(tmp_path, "--config", str(config))
    client: NodeOpcuaClient | None = None
    try:
        moment = datetime.now(UTC).replace(microsecond=0)
        rows = [row(moment, m, "M-1", "length_x", 100.0, 0.010, 100.0118, 25.0) for m in ("CMM-01", "CMM.02")]
        drop_file(tmp_path / "inbox", "machines.csv", HEADER + "".join(rows))
        client = NodeOpcuaClient(endpoint, tmp_path / "node")
        ns = client.request("namespace", uri=CMM_URI)
        machinery = client.request("namespace", uri=MACHINERY_URI)
        objects = client.request("children", node="i=85")
        folders = [c["nodeId"] for c in objects if c["browseName"] == f"{machinery}:Machines"]
        assert len(folders) == 1, objects
        machines = {f"ns={ns};s=Machines/{m}" for m in ("CMM-01", "CMM.02")}

        def attempt() -> list[dict[str, Any]] | None:
            found = client.request(
                "instances", type_uri=MACHINERY_URI, type_name="MachineIdentificationType", root=folders[0], max_depth=2
            )
            nodes: list[dict[str, Any]] = found["nodes"]
            return nodes if machines <= {n["parent"] for n in nodes} else None

        identifications = client.poll("the machines' identification", attempt)
        assert sorted(n["parent"] for n in identifications) == sorted(machines)
        ident = next(n["nodeId"] for n in identifications if n["parent"] == f"ns={ns};s=Machines/CMM-01")
        properties = {c["browseName"].split(":", 1)[1]: c["nodeId"] for c in client.request("children", node=ident)}
        names = ["Manufacturer", "Model", "SerialNumber", "ProductInstanceUri", "YearOfConstruction"]
        values = client.request("read", nodes=[properties[n] for n in names])
        assert [v["value"] for v in values] == [
            "Test Metrology GmbH",
            "Contura 7/10/6",
            "SN-4711",
            "urn:test-metrology:cmm:SN-4711",
            2019,
        ]
        assert [v["dataType"] for v in values] == ["LocalizedText", "LocalizedText", "String", "String", "UInt16"]
        state = client.request(
            "translate",
            node=f"ns={ns};s=Machines/CMM-01",
            path=[f"{machinery}:MachineryBuildingBlocks", f"{machinery}:MachineryItemState", "0:CurrentState"],
        )
        assert state["status"] == "Good", state
        [current] = client.request("read", nodes=[state["nodeId"]])
        assert current["value"] == "Executing"  # a file just came (idle after 600 s by default)
    finally:
        if client is not None:
            client.close()
        assert gateway.stop() == 0, gateway.log_text()


# ---------------------------------------------------------------- values, units, status codes


def read_variables(shop: Shop, machine: str, feature: str, names: list[str]) -> dict[str, dict[str, Any]]:
    values = shop.client.request("read", nodes=[shop.char(machine, feature, n) for n in names])
    return dict(zip(names, values, strict=True))


def unit_id(shop: Shop, machine: str, feature: str, variable: str) -> int:
    [units] = shop.client.request("read", nodes=[shop.char(machine, feature, f"{variable}/EngineeringUnits")])
    assert (
        units["status"] == "Good"
        and units["value"]["namespaceUri"] == "http://www.opcfoundation.org/UA/units/un/cefact"
    )
    return int(units["value"]["unitId"])


def test_values_units_and_status_codes_match_the_history(shop: Shop) -> None:
    wait_for_characteristics(shop)
    names = ["MeasuredLength", "CompensatedLength", "Deviation", "Uncertainty", "Verdict", "PartId", "PartTemperature"]
    for machine, feature in sorted(EXPECTED - {("CMM-01", "angle_a"), REJECTED}):
        point = newest(shop, machine, feature)

        def newest_read(m: str = machine, f: str = feature, part: str = point["part_id"]) -> dict[str, Any] | None:
            values = read_variables(shop, m, f, names)
            return values if values["PartId"]["value"] == part else None

        read = shop.client.poll(f"{machine}/{feature}'s newest part", newest_read)
        assert read["MeasuredLength"]["value"] == point["measured_mm"]
        assert read["CompensatedLength"]["value"] == point["compensated_mm"]
        assert read["Deviation"]["value"] == point["deviation_um"]
        assert read["Uncertainty"]["value"] == point["uncertainty_um"]
        assert read["Verdict"]["value"] == point["verdict"]
        assert read["PartTemperature"]["value"] == point["part_temp_c"]
        for name in names:
            assert parse_time(read[name]["sourceTimestamp"]) == parse_time(point["time"]), (machine, feature, name)
        statuses = {name: read[name]["status"] for name in names}
        if point["verdict"] == "UNCERTAIN" or "temperature_assumed" in point["flags"]:
            # the result itself is Uncertain; nothing is Bad
            for name in ("CompensatedLength", "Deviation", "Verdict"):
                assert statuses[name].startswith("Uncertain"), (machine, feature, statuses)
            assert not any(s.startswith("Bad") for s in statuses.values()), (machine, feature, statuses)
        else:
            assert set(statuses.values()) == {"Good"}, (machine, feature, statuses)
        assert unit_id(shop, machine, feature, "CompensatedLength") == MM
        assert unit_id(shop, machine, feature, "Deviation") == UM
    # the shop's data gives the cases the status codes are about
    assert newest(shop, "CMM-02", "length_x")["verdict"] == "UNCERTAIN"
    assert "temperature_assumed" in newest(shop, "CMM.03", "Bore")["flags"]
    assert newest(shop, "CMM-01", "length_x")["verdict"] == "PASS"


def test_a_characteristic_whose_newest_row_was_rejected_is_bad(shop: Shop) -> None:
    wait_for_characteristics(shop)
    names = ["CompensatedLength", "Deviation", "Verdict"]

    def bad() -> dict[str, dict[str, Any]] | None:
        values = read_variables(shop, *REJECTED, names)
        return values if values["Verdict"]["status"].startswith("Bad") else None

    read = shop.client.poll("the rejected row's Bad status", bad)
    for name in names:
        assert read[name]["status"].startswith("Bad") and read[name]["value"] is None, (name, read[name])
    assert [p["part_id"] for p in shop.history_api(*REJECTED)] == ["P-2"], "the rejected row is not in the history"


def test_an_angle_is_a_measured_value_in_degrees(shop: Shop) -> None:
    wait_for_characteristics(shop)
    point = newest(shop, "CMM-01", "angle_a")
    read = read_variables(shop, "CMM-01", "angle_a", ["MeasuredValue", "CompensatedLength", "Verdict"])
    assert (read["MeasuredValue"]["value"], read["CompensatedLength"]["value"]) == (45.02, 45.02)
    assert read["Verdict"]["value"] == point["verdict"] == "PASS"
    assert unit_id(shop, "CMM-01", "angle_a", "MeasuredValue") == DEGREE
    assert unit_id(shop, "CMM-01", "angle_a", "CompensatedLength") == DEGREE
    children = shop.client.request("children", node=shop.char("CMM-01", "angle_a"))
    assert f"{shop.ns}:MeasuredLength" not in {c["browseName"] for c in children}


# ---------------------------------------------------------------- history


@pytest.mark.parametrize(("variable", "field"), [("CompensatedLength", "compensated_mm"), ("Verdict", "verdict"),
                                                 ("Deviation", "deviation_um")])  # fmt: skip
def test_history_read_in_pages_returns_what_the_history_api_returns(shop: Shop, variable: str, field: str) -> None:
    wait_for_characteristics(shop)
    node = shop.char("CMM-01", "length_x", variable)
    attributes = shop.client.request("attributes", node=node, attributes=["AccessLevel", "Historizing"])
    assert attributes["Historizing"]["value"] is True
    assert attributes["AccessLevel"]["value"] == 0x01 | 0x04  # CurrentRead | HistoryRead
    points = shop.history_api("CMM-01", "length_x")
    assert len(points) == HISTORY_ROWS
    history = shop.client.request(
        "history",
        node=node,
        start=iso(shop.start - timedelta(seconds=1)),
        end=iso(shop.start + timedelta(seconds=HISTORY_ROWS + 1)),
        page=HISTORY_PAGE,
    )
    assert history["status"] == "Good"
    pages = history["pages"]
    assert sum(pages) == HISTORY_ROWS and max(pages) == HISTORY_PAGE and len(pages) >= HISTORY_ROWS // HISTORY_PAGE
    assert [v["value"] for v in history["values"]] == [p[field] for p in points]
    assert [parse_time(v["sourceTimestamp"]) for v in history["values"]] == [parse_time(p["time"]) for p in points]
    assert {v["status"] for v in history["values"]} == {"Good"}


# ---------------------------------------------------------------- method, events


def get_latest(shop: Shop, machine: str, feature: str) -> dict[str, Any]:
    result: dict[str, Any] = shop.client.request(
        "call",
        object=shop.nid("CMM"),
        method=shop.nid("CMM/GetLatestResult"),
        inputs=[{"type": "String", "value": machine}, {"type": "String", "value": feature}],
    )
    return result


def test_get_latest_result(shop: Shop) -> None:
    wait_for_characteristics(shop)
    point = newest(shop, "CMM-02", "length_x")
    result = get_latest(shop, "CMM-02", "length_x")
    assert result["status"] == "Good"
    outputs = [o["value"] for o in result["outputs"]]
    part_id, measured, compensated, deviation, uncertainty, lower, upper, verdict, temp, stamp, unit = outputs
    assert (part_id, verdict, unit) == ("P-2", "UNCERTAIN", "mm")
    assert (measured, compensated, deviation, uncertainty) == (
        point["measured_mm"],
        point["compensated_mm"],
        point["deviation_um"],
        point["uncertainty_um"],
    )
    assert (lower, upper, temp) == (-0.01, 0.01, 20.0)
    assert parse_time(stamp) == parse_time(point["time"])
    assert [o["dataType"] for o in result["outputs"]] == ["String", *["Double"] * 6, "String", "Double", "DateTime",
                                                          "String"]  # fmt: skip
    assert get_latest(shop, "CMM-02", "never_measured") == {"status": "BadNotFound", "outputs": []}
    assert get_latest(shop, "NO-SUCH-CMM", "length_x")["status"] == "BadNotFound"


def test_result_ready_events_arrive_for_new_files(tmp_path: Path) -> None:
    gateway, endpoint = start_gateway(tmp_path)
    client: NodeOpcuaClient | None = None
    try:
        client = NodeOpcuaClient(endpoint, tmp_path / "node")
        ns = client.request("namespace", uri=CMM_URI)
        subscribed = client.request("events", type_uri=CMM_URI, type_name="ResultReadyEventType")
        assert subscribed["typeId"] == f"ns={ns};s=Types/ResultReadyEventType"
        moment = datetime(2026, 11, 27, 8, 0, 0, 250000, tzinfo=UTC)
        drop_file(
            tmp_path / "inbox",
            "new.csv",
            HEADER
            + row(moment, "CMM-04", "E-1", "length_x", 100.0, 0.010, 100.0118, 25.0)
            + row(moment, "CMM-04", "E-1", "angle_a", 45.0, 0.1, 45.5, 25.0, "deg"),
        )
        events = client.wait_events(lambda e: len(e) >= 2, "two ResultReady events")
        time.sleep(0.5)  # one event per record: no third one follows
        assert len(client.events) == 2
        by_feature = {e["Feature"]: e for e in events}
        assert set(by_feature) == {"length_x", "angle_a"}
        length, angle = by_feature["length_x"], by_feature["angle_a"]
        for event, feature, verdict, unit in ((length, "length_x", "PASS", "mm"), (angle, "angle_a", "FAIL", "deg")):
            assert event["EventType"] == subscribed["typeId"]
            assert event["SourceNode"] == f"ns={ns};s=CMM/CMM-04/Characteristics/{feature}"
            assert event["SourceName"] == f"CMM-04/{feature}"
            assert event["Message"] == f"CMM-04 {feature} {verdict}"
            assert parse_time(event["Time"]) == moment == parse_time(event["MeasurementTime"])
            assert (event["MachineId"], event["PartId"], event["Verdict"], event["Unit"]) == (
                "CMM-04",
                "E-1",
                verdict,
                unit,
            )
        assert angle["CompensatedLength"] == 45.5 and math.isclose(angle["Deviation"], 500.0, rel_tol=1e-9)
        assert length["CompensatedLength"] == gateway_compensated(gateway, "length_x")
    finally:
        if client is not None:
            client.close()
        assert gateway.stop() == 0, gateway.log_text()


def gateway_compensated(gateway: GatewayProcess, feature: str) -> float:
    query = urllib.parse.urlencode(
        {"machine_id": "CMM-04", "since": "2026-11-27T07:00:00Z", "until": "2026-11-27T09:00:00Z"}
    )
    points = [p for p in gateway.get_json(f"/api/v1/history?{query}")["points"] if p["feature"] == feature]
    return float(points[-1]["compensated_mm"])


# ---------------------------------------------------------------- security


def test_writes_are_refused(shop: Shop) -> None:
    refused = {"BadUserAccessDenied", "BadNotWritable"}
    targets = [
        (shop.char("CMM-01", "length_x", "CompensatedLength"), "Double", 1.0),
        (shop.char("CMM-01", "length_x", "Verdict"), "String", "FAIL"),
        (shop.char("CMM-01", "length_x", "Cpk"), "Double", 9.0),
        (shop.nid("CMM/CMM-01/CompensatedLength"), "Double", 1.0),
    ]
    nodes = [t[0] for t in targets]
    before = shop.client.poll(
        "the nodes to write",
        lambda: (r := shop.client.request("read", nodes=nodes)) and all(v["status"] == "Good" for v in r) and r,
    )
    for node, kind, value in targets:
        assert shop.client.request("write", node=node, type=kind, value=value) in refused, node
    assert shop.client.request("read", nodes=nodes) == before
