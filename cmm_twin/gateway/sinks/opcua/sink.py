"""Live OPC UA tags for SCADA/PLCs: an asyncua server fed with the newest measurement per machine
and per characteristic, and the gateway's health.

The tags are described in `address_space` (and the README, "OPC UA address space"); what the
server offers and whom it lets in in `security` (and docs/opcua-security.md); its certificate in
`certificates`; the settings in `settings`. This module starts and stops the server and writes to it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import gc
import logging
import socket
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from asyncua.server.server import Server

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.quality.history import newest_records
from cmm_twin.gateway.quality.monitor import QualityMonitor
from cmm_twin.gateway.sinks.base import Delivered, Sink, SinkStartError, WriteOutcome
from cmm_twin.gateway.sinks.opcua.address_space import NAMESPACE_URI, AddressSpace, gateway_values, ns_to_datetime
from cmm_twin.gateway.sinks.opcua.certificates import APPLICATION_URI, SERVER_NAME, ensure_certificate, fingerprint
from cmm_twin.gateway.sinks.opcua.characteristics import CharacteristicNodes
from cmm_twin.gateway.sinks.opcua.history import install_history
from cmm_twin.gateway.sinks.opcua.machinery import MachineryModel
from cmm_twin.gateway.sinks.opcua.results import ResultEvents, add_get_latest_result
from cmm_twin.gateway.sinks.opcua.security import (
    POLICY_NAMES,
    CredentialsUserManager,
    GatewayInternalServer,
    LoginThrottle,
    TrustList,
    plan_security,
)
from cmm_twin.gateway.sinks.opcua.settings import (
    HEALTH_INTERVAL_S,
    PASSWORD_ENV,
    USER_ENV,
    OpcUaSettings,
    parse_endpoint,
)
from cmm_twin.physics.compensation import COMPENSATION_NAMES
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch, newest_per_characteristic

__all__ = ["LoginThrottle", "OpcUaSettings", "OpcUaSink", "OpcUaStartError", "TrustList"]

_logger = logging.getLogger(__name__)


class OpcUaStartError(SinkStartError):
    """The OPC UA server could not start (port taken, address not local, state dir unusable)."""


class OpcUaSink(Sink):
    """Serves the newest measurement of each machine and the gateway's health as OPC UA tags.

    A live sink (not durable): `write` keeps only the last row per machine and per characteristic
    of each batch. Each `open` starts a fresh asyncua server, with the characteristics of the
    embedded history (`history_path`) already there; a failed `open` leaves none behind, so it can
    be retried.
    """

    name = "opcua"
    durable = False
    health_interval_s = HEALTH_INTERVAL_S

    def __init__(self, settings: OpcUaSettings, history_path: Path | None = None) -> None:
        self.settings = settings
        self.history_path = history_path
        """The embedded historian's store (None: none): the characteristics are rebuilt from it."""
        self._plan = plan_security(settings)
        self._space: AddressSpace | None = None
        """The running server's nodes; None while not open."""
        self._characteristics: CharacteristicNodes | None = None
        self._machinery: MachineryModel | None = None
        """The Machinery model (OPC 40001-1) of the running server; its nodesets load in the background."""
        self._machinery_load: asyncio.Task[bool] | None = None
        self._stale: dict[tuple[str, str], None] = {}
        """Characteristics of batches the runner dropped under load (`superseded`): written with
        the next batch or health sample, so no figure stays behind the monitor."""
        self.quality: QualityMonitor | None = None
        """The capability monitor whose figures the Characteristics show (from the gateway's app)."""
        self._app: web.Application | None = None
        """The gateway's HTTP application: the embedded historian's reader is taken from it."""
        self._results: ResultEvents | None = None
        self._warned = False
        self._cert_path: Path | None = None
        self._cert_fingerprint = ""
        self.login_throttle = LoginThrottle()
        self.trust = TrustList(settings.trust_dir) if settings.trust_dir is not None else None

    # -- lifecycle

    async def open(self) -> None:
        """Start the server; OpcUaStartError (after undoing a partial start) when it cannot."""
        if self._space is not None:
            raise RuntimeError("OpcUaSink.open called twice")
        endpoint = self.settings.endpoint
        self._warn_about_access()
        await self._check_bindable(endpoint)
        try:
            cert_path, key_path = await asyncio.to_thread(
                ensure_certificate, self.settings.state_dir / "opcua", self.settings.host
            )
            self._cert_fingerprint = await asyncio.to_thread(fingerprint, cert_path)
        except OSError as exc:
            raise OpcUaStartError(f"OPC UA server on {endpoint} cannot keep its certificate: {exc}") from exc
        self._cert_path = cert_path
        await self._load_trust_list()
        users = CredentialsUserManager(self.settings.username, self.settings.password, self._plan.anonymous)
        server = Server(iserver=GatewayInternalServer(users, self.login_throttle, self.trust))
        if self.trust is not None:
            server.set_certificate_validator(self.trust.validate)
        try:
            self._space = await self._start(server, cert_path, key_path)
        except Exception as exc:
            await _stop(server)
            raise OpcUaStartError(f"OPC UA server could not start on {endpoint}: {_describe(exc)}") from exc
        except BaseException:  # cancelled while starting: undo the partial start, then propagate
            await _stop(server)
            raise
        self._characteristics = CharacteristicNodes(self._space, historized=self.history_path is not None)
        self._machinery = MachineryModel(self._space.server, self._space.ns, self.settings)
        now = dt.datetime.now(dt.UTC)
        # The rebuild makes tens of thousands of long-lived objects at once; the cyclic collector
        # would scan the ~450,000 of asyncua's standard address space several times meanwhile
        # (half the rebuild's time, measured). The gateway freezes them all once it has started.
        collecting = gc.isenabled()
        gc.disable()
        try:
            await self._rebuild_characteristics(now)
        finally:
            if collecting:
                gc.enable()
        self._machinery_load = asyncio.create_task(self._machinery.load(), name="opcua-machinery-load")
        if self.quality is not None:  # what the monitor holds already (rebuilt from the history)
            for report in self.quality.reports():
                await self._characteristics.write(report, now)
        _logger.debug("OPC UA server listening on %s", self.endpoint_url)

    async def _rebuild_characteristics(self, now: dt.datetime) -> None:
        """Show the newest record of every characteristic (and so of every machine) in the embedded
        history, so a known NodeId answers right after a restart (a store that cannot be read: the
        historian says so)."""
        if self.history_path is None or self._characteristics is None:
            return
        try:
            newest = await asyncio.to_thread(newest_records, self.history_path, 1)
        except sqlite3.Error as exc:
            # The historian sink reports a corrupt store, and what to do, once.
            _logger.debug("OPC UA: the characteristics start empty: cannot read the history: %s", exc)
            return
        await self._write_results(newest, now)
        if self._machinery is not None:
            features: dict[str, list[str]] = {}
            for machine_id, feature in dict.fromkeys(zip(newest.machine_id, newest.feature, strict=True)):
                features.setdefault(machine_id, []).append(feature)
            for machine_id, known in features.items():
                await self._machinery.ensure(machine_id, known)
        if len(newest):
            _logger.info("OPC UA: %d characteristics taken from the history", len(newest))

    def _warn_about_access(self) -> None:
        """Say once (not at every retry of `open`) when access is restricted beyond the defaults."""
        if self._plan.anonymous or self._warned:
            return
        self._warned = True
        _logger.warning(
            "anonymous access and the None policy are off: endpoint %s is not loopback; "
            "pass --opcua-allow-anonymous to allow them",
            self.settings.endpoint,
        )
        if not self.settings.has_credentials:
            _logger.warning(
                "no OPC UA client can log in: anonymous access is off and %s/%s are not set; "
                "set them to allow user-name login",
                USER_ENV,
                PASSWORD_ENV,
            )

    async def _load_trust_list(self) -> None:
        """(Re)read `--opcua-trust-dir`, when given."""
        if self.trust is None:
            return
        try:
            trusted = await asyncio.to_thread(self.trust.load)
        except OSError as exc:
            raise OpcUaStartError(f"--opcua-trust-dir {self.trust.directory}: cannot read it: {exc}") from None
        _logger.info("OPC UA trust list: %d client certificate(s) in %s", trusted, self.trust.directory)
        if not trusted:
            _logger.warning(
                "--opcua-trust-dir %s holds no certificate: no client with a certificate can connect",
                self.trust.directory,
            )

    async def _check_bindable(self, endpoint: str) -> None:
        """Fail fast, before the slow address-space load, when the endpoint cannot be bound (and
        without asyncua logging a traceback for it)."""
        host, port, _ = parse_endpoint(endpoint)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise OpcUaStartError(f"OPC UA server could not start on {endpoint}: {_describe(exc)}") from None
        bound, error = 0, None
        for family, kind, proto, _, address in infos:
            try:
                with socket.socket(family, kind, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    probe.bind(address)
                bound += 1
            except OSError as exc:
                # Like asyncio.create_server: an address that is not available (e.g. IPv6 disabled) is
                # skipped, any other failure (port in use, permission) is fatal.
                error = exc
                if exc.errno != errno.EADDRNOTAVAIL:
                    break
        if error is not None and (error.errno != errno.EADDRNOTAVAIL or not bound):
            raise OpcUaStartError(f"OPC UA server could not start on {endpoint}: {_describe(error)}")

    async def _start(self, server: Server, cert_path: Path, key_path: Path) -> AddressSpace:
        server.set_server_name(SERVER_NAME)
        server.product_uri = NAMESPACE_URI
        server.manufacturer_name = "cmm-twin"
        await server.init()
        server.set_endpoint(self.settings.endpoint)
        await server.set_application_uri(APPLICATION_URI)
        server.set_security_policy(list(self._plan.policies))
        server.set_identity_tokens(list(self._plan.tokens))
        await server.load_certificate(cert_path)
        await server.load_private_key(key_path)
        space = await AddressSpace.create(server)
        from cmm_twin.gateway.web import HISTORY_KEY  # noqa: PLC0415 (web imports the sinks' base)

        history = self._app.get(HISTORY_KEY) if self._app is not None and self.history_path is not None else None
        await install_history(server, history, space.ns)
        await add_get_latest_result(server, space.ns)
        self._results = await ResultEvents.create(server, space.ns)
        await server.start()
        return space

    async def close(self) -> None:
        """Stop the server; never raises, idempotent."""
        space, self._space = self._space, None
        self._characteristics = None
        self._results = None
        task, self._machinery_load, self._machinery = self._machinery_load, None, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        if space is not None:
            await _stop(space.server)

    # -- information

    @property
    def namespace_index(self) -> int:
        """Index of `urn:cmm-twin` in the running server's NamespaceArray (0 while not open)."""
        return self._space.ns if self._space is not None else 0

    @property
    def endpoint_url(self) -> str:
        """The endpoint the server listens on (the configured one while not open)."""
        if self._space is not None:
            return str(self._space.server.endpoint.geturl())
        return self.settings.endpoint

    def security_summary(self) -> str:
        """One line for the startup log: policies, logins and the certificate."""
        plan = self._plan
        policies = ", ".join(POLICY_NAMES.get(p, str(p)) for p in plan.policies)
        logins = []
        if plan.anonymous:
            logins.append("anonymous")
        if self.settings.has_credentials:
            logins.append(f"user {self.settings.username!r}")
        login = " + ".join(logins) if logins else f"nobody (set {USER_ENV}/{PASSWORD_ENV})"
        anon = f"anonymous/None {'on' if plan.anonymous else 'off'} ({plan.reason})"
        cert = "certificate not generated yet"
        if self._cert_path is not None:
            cert = f"certificate {self._cert_path} SHA-256 {self._cert_fingerprint}"
        trust = ""
        if self.trust is not None:
            trust = f"; client certificates: only the {len(self.trust.fingerprints)} in {self.trust.directory}"
        return f"OPC UA {self.endpoint_url}: policies {policies}; login {login}; {anon}; {cert}{trust}"

    def describe(self) -> str:
        """The endpoint and its security, for the start-up log."""
        return f"{self.endpoint_url} ({self.security_summary()})"

    # -- data

    def _require_server(self) -> Server:
        return self._require_space().server

    def _require_space(self) -> AddressSpace:
        if self._space is None:
            raise RuntimeError("OpcUaSink used while not open")
        return self._space

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Publish the last row of each characteristic and of each machine in `batch` (arrival
        order) and return Delivered."""
        self._require_space()
        if len(batch) == 0:
            return Delivered()
        now = dt.datetime.now(dt.UTC)
        await self._write_results(batch, now)
        if self._machinery is not None:
            await self._machinery.observe(now, ok=zip(batch.machine_id, batch.feature, strict=True))
        if self._results is not None:
            # One event per characteristic of the batch (its newest record), as for the values: a
            # live file has one row per characteristic; a backlog or a bulk file is a burst whose
            # intermediate values a live sink skips (an event costs about 150 µs on the event loop).
            newest = newest_per_characteristic(batch)
            await self._results.emit(batch if len(newest) == len(batch) else batch.take(newest))
        await self._write_characteristics(batch, now)
        return Delivered()

    async def _write_results(self, batch: RecordBatch, now: dt.datetime) -> None:
        """Write the newest row of each characteristic, then of each machine, of `batch`."""
        space = self._require_space()
        if self._characteristics is not None:
            await self._characteristics.write_results(batch, newest_per_characteristic(batch), now)
        # dict(zip(...)) runs in C and keeps the last position of each key: the newest row per machine.
        last_row = dict(zip(batch.machine_id, range(len(batch)), strict=True))
        rows = list(last_row.values())
        stamps = batch.timestamp_ns[rows].tolist()
        measured = batch.measured_mm[rows].tolist()
        compensated = batch.compensated_mm[rows].tolist()
        temperature = batch.part_temp_c[rows].tolist()
        deviation = batch.deviation_um[rows].tolist()
        uncertainty = batch.uncertainty_um[rows].tolist()
        lower = batch.lower_tol_mm[rows].tolist()
        upper = batch.upper_tol_mm[rows].tolist()
        verdicts = VERDICT_NAMES[batch.verdict[rows]].tolist()
        compensations = COMPENSATION_NAMES[batch.compensation[rows]].tolist()
        for k, (machine_id, row) in enumerate(last_row.items()):
            values = (
                batch.part_id[row],
                batch.feature[row],
                batch.unit[row],
                compensations[k],
                batch.source_format[row],
                measured[k],
                compensated[k],
                temperature[k],
                deviation[k],
                uncertainty[k],
                lower[k],  # NaN (status Good): no limit on that side
                upper[k],
                verdicts[k],
            )
            await space.write_machine(machine_id, values, ns_to_datetime(stamps[k]), now)

    async def _write_characteristics(self, batch: RecordBatch, now: dt.datetime) -> None:
        """Show the monitor's figures of every characteristic of `batch` (it saw the batch before
        its commit, so they include it) and of the batches dropped since."""
        self._stale.update(dict.fromkeys(zip(batch.machine_id, batch.feature, strict=True)))
        await self._write_stale(now)

    async def _write_stale(self, now: dt.datetime) -> None:
        if self.quality is None or self._characteristics is None:
            return
        keys, self._stale = self._stale, {}
        for machine_id, feature in keys:
            report = self.quality.report(machine_id, feature)
            if report is not None:
                await self._characteristics.write(report, now)

    def health_info(self) -> dict[str, Any]:
        """The Machinery model's state (`machinery`: loading, ready or unavailable and why,
        `machines`, `nodesets_load_s`) and the number of characteristics served."""
        info: dict[str, Any] = {"characteristics": len(self._characteristics or ())}
        if self._machinery is not None:
            info.update(self._machinery.health())
        return info

    async def rejected(self, keys: Sequence[tuple[str, str]]) -> None:
        """The newest rows of these characteristics were rejected: their results turn Bad."""
        now = dt.datetime.now(dt.UTC)
        if self._characteristics is not None:
            await self._characteristics.mark_rejected(keys, now)
        if self._machinery is not None:
            await self._machinery.observe(now, rejected=keys)

    def superseded(self, batch: RecordBatch) -> None:
        """A batch dropped under load: its machines' newest values come with a newer batch, but
        its characteristics' figures are written with the next batch or health sample."""
        self._stale.update(dict.fromkeys(zip(batch.machine_id, batch.feature, strict=True)))

    def add_routes(self, app: web.Application) -> None:
        """No routes: takes the gateway's capability monitor from the app, to show its figures, and
        keeps the app to take the embedded historian's reader from it when the server starts."""
        from cmm_twin.gateway.web import QUALITY_KEY  # noqa: PLC0415 (web imports the sinks' base)

        self.quality = app.get(QUALITY_KEY)
        self._app = app  # the historian's routes (its reader) come after these

    async def write_health(self, samples: Sequence[GatewayHealth]) -> WriteOutcome:
        """Publish the newest sample on the Gateway object (only the values that changed). Errors
        are logged, never raised; nothing happens while not open."""
        space = self._space
        if space is None or not samples:
            return Delivered()
        try:
            now = dt.datetime.now(dt.UTC)
            await space.write_gateway(gateway_values(samples[-1]), now)
            if self._machinery is not None:
                await self._machinery.tick(now)
            await self._write_stale(now)
        except Exception:
            _logger.exception("updating the OPC UA Gateway object failed")
        return Delivered()


async def _stop(server: Server) -> None:
    """Stop `server`, also one that started only in part; never raises (but lets a cancellation
    of the caller through)."""
    try:
        await _stop_clock(server)
        await server.stop()
    except Exception:
        _logger.warning("error while stopping the OPC UA server", exc_info=True)


async def _stop_clock(server: Server) -> None:
    """Cancel asyncua's once-a-second clock task, so stopping does not wait up to a second for it."""
    task = server.iserver.time_task
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    server.iserver.time_task = None


def _describe(exc: BaseException) -> str:
    """A one-line reason for `exc`."""
    text = str(exc).strip().splitlines()
    reason = text[0] if text else ""
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
