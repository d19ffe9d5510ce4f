"""The official OPC UA nodesets of the Machinery model (OPC 40001-1): where they are and how they
are loaded into a server (docs/opcua.md, "Machinery").

The files (DI, IA, Machinery; MIT-licensed, OPC Foundation) come from the npm package
node-opcua-nodesets, fetched and checked by `scripts/nodesets.sh` into
`<sys.prefix>/share/cmm-twin/nodesets` (the default here), never from the repository;
`--opcua-nodesets DIR` / `CMM_OPCUA_NODESETS` name another directory. They are loaded with
asyncua's `import_xml` in dependency order, DI, IA, Machinery, not strict (asyncua 2.1.0 refuses a
few DI 1.05 nodes in strict mode; the Machinery model needs none of them). The import works on a
running server, and yields to the event loop every few nodes, so the server (and /health) answer
while it loads.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.xmlimporter import XmlImporter
from asyncua.server.server import Server

_logger = logging.getLogger(__name__)

NODESETS_ENV = "CMM_OPCUA_NODESETS"
DI_URI = "http://opcfoundation.org/UA/DI/"
IA_URI = "http://opcfoundation.org/UA/IA/"
MACHINERY_URI = "http://opcfoundation.org/UA/Machinery/"
NODESET_FILES: tuple[tuple[str, str], ...] = (
    (DI_URI, "Opc.Ua.Di.NodeSet2.xml"),
    (IA_URI, "Opc.Ua.IA.NodeSet2.xml"),
    (MACHINERY_URI, "Opc.Ua.Machinery.NodeSet2.xml"),
)
"""(namespace URI, file name) of each nodeset, in load order."""
FETCH_HINT = "run cmm-twin nodesets (in a checkout make does it) to fetch them"
_NODES_PER_YIELD = 20


class NodesetError(Exception):
    """The nodesets are missing or could not be loaded; the message says which and why."""


def default_nodesets_dir() -> Path:
    """Where scripts/nodesets.sh puts the nodesets for this Python environment."""
    return Path(sys.prefix) / "share" / "cmm-twin" / "nodesets"


def nodeset_paths(directory: Path) -> list[Path]:
    """The nodeset files in `directory`, in load order; NodesetError naming the first missing one."""
    paths = []
    for _, name in NODESET_FILES:
        path = directory / name
        if not path.is_file():
            what = "no such directory" if not directory.is_dir() else f"no {name} there"
            raise NodesetError(f"OPC UA nodesets not found in {directory} ({what}); {FETCH_HINT}")
        paths.append(path)
    return paths


@dataclass(frozen=True)
class LoadedNodesets:
    """What a server holds after `load_nodesets`."""

    di_ns: int
    """Index of the DI namespace in the server's NamespaceArray."""
    machinery_ns: int
    """Index of the Machinery namespace."""
    load_s: float
    """Seconds the import took (wall clock, yields included)."""


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _YieldingImporter(XmlImporter):
    """asyncua's importer, letting other tasks run every few nodes (an import takes about a second)."""

    _added = 0

    async def _add_node_data(self, nodedata: Any, no_namespace_migration: bool = False) -> ua.NodeId:
        self._added += 1
        if self._added % _NODES_PER_YIELD == 0:
            await asyncio.sleep(0)
        node: ua.NodeId = await super()._add_node_data(nodedata, no_namespace_migration)
        return node

    async def _add_missing_reverse_references(self, new_nodes: list[Any]) -> set[Any]:
        # The longest step (about 150 ms for DI): done a few nodes at a time. The same outcome,
        # as the address space ignores a reference it holds already.
        missing: set[Any] = set()
        for start in range(0, len(new_nodes), _NODES_PER_YIELD):
            missing |= await super()._add_missing_reverse_references(new_nodes[start : start + _NODES_PER_YIELD])
            await asyncio.sleep(0)
        return missing


async def load_nodesets(server: Server, directory: Path) -> LoadedNodesets:
    """Import DI, IA and Machinery from `directory` into `server` (initialised; started or not).
    NodesetError when a file is missing, unreadable or does not define the Machinery model."""
    paths = await asyncio.to_thread(nodeset_paths, directory)
    started = time.perf_counter()
    importer_log = logging.getLogger("asyncua.common.xmlimporter")
    # Not strict, the importer logs every node and reference it skips (DI's design-tool-only
    # nodes, structures it cannot map): noise for an operator, checked below instead. A filter
    # (not the level) so that loads into two servers at once cannot leave it quiet.
    quiet = _BelowError()
    importer_log.addFilter(quiet)
    try:
        for path in paths:
            try:
                importer = _YieldingImporter(server, strict_mode=False)
                await importer.import_xml(str(path))  # type: ignore[no-untyped-call]
            except Exception as exc:  # a damaged file: asyncua raises anything from XML to KeyError
                raise NodesetError(f"cannot load OPC UA nodeset {path}: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(0)
    finally:
        importer_log.removeFilter(quiet)
    namespaces = await server.get_namespace_array()
    missing = [uri for uri, _ in NODESET_FILES if uri not in namespaces]
    if missing:
        raise NodesetError(f"the nodesets in {directory} do not define {', '.join(missing)}")
    loaded = LoadedNodesets(
        di_ns=namespaces.index(DI_URI),
        machinery_ns=namespaces.index(MACHINERY_URI),
        load_s=time.perf_counter() - started,
    )
    _logger.debug("OPC UA nodesets DI, IA, Machinery loaded from %s in %.2f s", directory, loaded.load_s)
    return loaded
