#!/usr/bin/env node
// An independent OPC UA client (node-opcua) driven line by line: one JSON command per stdin line,
// one JSON answer per stdout line ({"id": ..., "ok": true, "result": ...} or {"id": ..., "ok": false,
// "error": "..."}); events of a subscription arrive as {"event": {...}} lines at any time.
// Used by tests/test_opcua_interop.py; by hand (docs/opcua.md, "Interoperability"):
//   node tests/interop/client.js opc.tcp://127.0.0.1:4840/cmm-twin/
//   {"id": 1, "op": "namespace", "uri": "urn:cmm-twin"}
// node-opcua logs to stdout too, so every line of the protocol starts with the PREFIX below.
"use strict";

const readline = require("node:readline");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");
const {
  AttributeIds,
  BrowseDirection,
  DataType,
  EventFilter,
  FilterOperator,
  HistoryReadRequest,
  LiteralOperand,
  MessageSecurityMode,
  NodeClassMask,
  OPCUAClient,
  ReadRawModifiedDetails,
  SecurityPolicy,
  TimestampsToReturn,
  Variant,
  coerceNodeId,
  resolveNodeId,
} = require("node-opcua-client");

const PREFIX = "@@interop ";
const SERVER_OBJECT = "i=2253";
const BASE_OBJECT_TYPE = "i=58";
const BASE_EVENT_TYPE = "i=2041";
const HIERARCHICAL = "i=33";
const HAS_SUBTYPE = "i=45";
const HAS_PROPERTY = "i=46";

function emit(message) {
  process.stdout.write(PREFIX + JSON.stringify(message) + "\n");
}

// -- values as JSON (NaN and infinities as strings, Int64 as numbers, dates as ISO 8601)

function plain(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return Number.isFinite(value) ? value : String(value);
  if (typeof value === "bigint") return Number(value);
  if (typeof value === "string" || typeof value === "boolean") return value;
  if (value instanceof Date) return value.toISOString();
  if (Buffer.isBuffer(value)) return value.toString("base64");
  if (Array.isArray(value)) {
    // node-opcua carries (U)Int64 as [high, low]
    if (value.length === 2 && value.every((v) => Number.isInteger(v))) return value[0] * 4294967296 + value[1];
    return value.map(plain);
  }
  if (value.constructor && value.constructor.name === "LocalizedText") return value.text;
  if (value.constructor && value.constructor.name === "QualifiedName") return `${value.namespaceIndex}:${value.name}`;
  if (value.constructor && value.constructor.name === "NodeId") return value.toString();
  if (value.constructor && value.constructor.name === "EUInformation") {
    return {
      namespaceUri: value.namespaceUri,
      unitId: value.unitId,
      displayName: value.displayName.text,
      description: value.description.text,
    };
  }
  if (typeof value.toJSON === "function") return value.toJSON();
  return String(value);
}

function dataValue(dv) {
  return {
    value: dv.value ? plain(dv.value.value) : null,
    dataType: dv.value ? DataType[dv.value.dataType] : null,
    status: dv.statusCode.name,
    sourceTimestamp: dv.sourceTimestamp ? dv.sourceTimestamp.toISOString() : null,
  };
}

function variantOf(spec) {
  // {"type": "String" | "Double" | ..., "value": ...}
  return new Variant({ dataType: DataType[spec.type], value: spec.value });
}

// -- browsing

async function browseAll(session, nodeId, referenceTypeId, includeSubtypes, nodeClassMask) {
  const out = [];
  let result = await session.browse({
    nodeId,
    referenceTypeId,
    includeSubtypes,
    browseDirection: BrowseDirection.Forward,
    nodeClassMask: nodeClassMask || 0,
    resultMask: 63,
  });
  for (;;) {
    if (result.statusCode.isNotGood()) throw new Error(`browse ${nodeId}: ${result.statusCode.name}`);
    out.push(...(result.references || []));
    if (!result.continuationPoint || result.continuationPoint.length === 0) return out;
    [result] = await session.browseNext([result.continuationPoint], false);
  }
}

function sameName(qualifiedName, nsIndex, name) {
  return qualifiedName.namespaceIndex === nsIndex && qualifiedName.name === name;
}

// The type node whose BrowseName is nsIndex:name, searched down the HasSubtype tree from `root`
// (a generic client knows a type by namespace URI and name, not by NodeId); with all its subtypes.
async function findType(session, root, nsIndex, name) {
  const queue = [root];
  while (queue.length) {
    const current = queue.shift();
    for (const ref of await browseAll(session, current, HAS_SUBTYPE, false)) {
      if (sameName(ref.browseName, nsIndex, name)) {
        const all = [ref.nodeId.toString()];
        const below = [ref.nodeId.toString()];
        while (below.length) {
          for (const sub of await browseAll(session, below.shift(), HAS_SUBTYPE, false)) {
            all.push(sub.nodeId.toString());
            below.push(sub.nodeId.toString());
          }
        }
        return all;
      }
      queue.push(ref.nodeId.toString());
    }
  }
  throw new Error(`no type ${nsIndex}:${name} below ${root}`);
}

// Objects below `root` (hierarchical references, breadth first, each node once, so `parent` is the
// nearest one) whose TypeDefinition is one of `typeIds`.
async function instancesOf(session, root, typeIds, maxDepth) {
  const wanted = new Set(typeIds);
  const seen = new Set([root]);
  const found = [];
  let level = [root];
  for (let depth = 0; depth <= maxDepth && level.length; depth++) {
    const next = [];
    for (const nodeId of level) {
      for (const ref of await browseAll(session, nodeId, HIERARCHICAL, true, NodeClassMask.Object)) {
        const id = ref.nodeId.toString();
        if (seen.has(id)) continue;
        seen.add(id);
        if (ref.typeDefinition && wanted.has(ref.typeDefinition.toString())) {
          found.push({ nodeId: id, browseName: plain(ref.browseName), parent: nodeId });
        }
        next.push(id);
      }
    }
    level = next;
  }
  return found;
}

async function nsIndex(session, uri) {
  const dv = await session.read({ nodeId: "i=2255", attributeId: AttributeIds.Value });
  const index = dv.value.value.indexOf(uri);
  if (index < 0) throw new Error(`namespace ${uri} not in the server's NamespaceArray`);
  return index;
}

// -- commands

const subscriptions = [];

const COMMANDS = {
  async namespace(session, cmd) {
    return nsIndex(session, cmd.uri);
  },

  // {"type_uri", "type_name", "root", "max_depth"?}: instances of a type found by name in the type tree
  async instances(session, cmd) {
    const typeNs = await nsIndex(session, cmd.type_uri);
    const typeIds = await findType(session, cmd.type_root || BASE_OBJECT_TYPE, typeNs, cmd.type_name);
    return { types: typeIds, nodes: await instancesOf(session, cmd.root, typeIds, cmd.max_depth ?? 6) };
  },

  // {"nodes": [nodeId, ...]}: Value of each, with data type, status and source timestamp
  async read(session, cmd) {
    const dvs = await session.read(cmd.nodes.map((nodeId) => ({ nodeId, attributeId: AttributeIds.Value })));
    return dvs.map(dataValue);
  },

  // {"node", "attributes": ["AccessLevel", "Historizing", ...]}
  async attributes(session, cmd) {
    const dvs = await session.read(cmd.attributes.map((name) => ({ nodeId: cmd.node, attributeId: AttributeIds[name] })));
    return Object.fromEntries(cmd.attributes.map((name, i) => [name, dataValue(dvs[i])]));
  },

  // {"node"}: the children of a node (hierarchical references): browse name, node id, class, type
  async children(session, cmd) {
    const refs = await browseAll(session, cmd.node, HIERARCHICAL, true);
    return refs.map((ref) => ({
      browseName: plain(ref.browseName),
      nodeId: ref.nodeId.toString(),
      nodeClass: ref.nodeClass,
      typeDefinition: ref.typeDefinition ? ref.typeDefinition.toString() : null,
    }));
  },

  // {"node", "path": ["0:EngineeringUnits"]}: the NodeId a relative path of BrowseNames leads to
  async translate(session, cmd) {
    const result = await session.translateBrowsePath({
      startingNode: coerceNodeId(cmd.node),
      relativePath: {
        elements: cmd.path.map((part) => {
          const [ns, name] = part.split(/:(.*)/s);
          return {
            referenceTypeId: resolveNodeId(HIERARCHICAL),
            isInverse: false,
            includeSubtypes: true,
            targetName: { namespaceIndex: Number(ns), name },
          };
        }),
      },
    });
    if (result.statusCode.isNotGood()) return { status: result.statusCode.name, nodeId: null };
    return { status: result.statusCode.name, nodeId: result.targets[0].targetId.toString() };
  },

  // {"node", "start", "end", "page"}: HistoryRead raw in pages of `page` values, following the
  // continuation points to the end
  async history(session, cmd) {
    const details = new ReadRawModifiedDetails({
      isReadModified: false,
      startTime: new Date(cmd.start),
      endTime: new Date(cmd.end),
      numValuesPerNode: cmd.page,
      returnBounds: false,
    });
    const values = [];
    const pages = [];
    let continuationPoint = null;
    for (;;) {
      const response = await session.historyRead(
        new HistoryReadRequest({
          historyReadDetails: details,
          timestampsToReturn: TimestampsToReturn.Source,
          releaseContinuationPoints: false,
          nodesToRead: [{ nodeId: cmd.node, continuationPoint }],
        }),
      );
      const result = response.results[0];
      if (result.statusCode.isNotGood()) return { status: result.statusCode.name, values, pages };
      const page = (result.historyData && result.historyData.dataValues) || [];
      pages.push(page.length);
      values.push(...page.map(dataValue));
      continuationPoint = result.continuationPoint;
      if (!continuationPoint || continuationPoint.length === 0) return { status: "Good", values, pages };
      if (cmd.max_pages && pages.length >= cmd.max_pages) return { status: "Stopped", values, pages };
    }
  },

  // {"object", "method", "inputs": [{"type", "value"}]}
  async call(session, cmd) {
    const result = await session.call({
      objectId: coerceNodeId(cmd.object),
      methodId: coerceNodeId(cmd.method),
      inputArguments: cmd.inputs.map(variantOf),
    });
    return {
      status: result.statusCode.name,
      outputs: (result.outputArguments || []).map((v) => ({ dataType: DataType[v.dataType], value: plain(v.value) })),
    };
  },

  // {"node", "type", "value"}: write the Value; answers the status the server gave
  async write(session, cmd) {
    const status = await session.write({
      nodeId: cmd.node,
      attributeId: AttributeIds.Value,
      value: { value: variantOf(cmd) },
    });
    return status.name;
  },

  // {"type_uri", "type_name"}: subscribe to events of that type (and its subtypes) on the Server
  // object; selects the BaseEventType fields and every property of the type. Events follow as lines.
  async events(session, cmd) {
    const typeNs = await nsIndex(session, cmd.type_uri);
    const [typeId] = await findType(session, BASE_EVENT_TYPE, typeNs, cmd.type_name);
    const props = await browseAll(session, typeId, HAS_PROPERTY, false);
    const base = ["EventType", "SourceNode", "SourceName", "Time", "Message", "Severity"];
    const selects = [
      ...base.map((name) => ({ typeDefinitionId: BASE_EVENT_TYPE, browsePath: [{ namespaceIndex: 0, name }] })),
      ...props.map((p) => ({ typeDefinitionId: typeId, browsePath: [p.browseName] })),
    ];
    const names = [...base, ...props.map((p) => p.browseName.name)];
    const subscription = await session.createSubscription2({
      requestedPublishingInterval: 50,
      requestedLifetimeCount: 1000,
      requestedMaxKeepAliveCount: 20,
      maxNotificationsPerPublish: 0,
      publishingEnabled: true,
      priority: 1,
    });
    subscriptions.push(subscription);
    const filter = new EventFilter({
      selectClauses: selects.map((s) => ({ ...s, attributeId: AttributeIds.Value })),
      whereClause: {
        elements: [
          {
            filterOperator: FilterOperator.OfType,
            filterOperands: [
              new LiteralOperand({ value: new Variant({ dataType: DataType.NodeId, value: coerceNodeId(typeId) }) }),
            ],
          },
        ],
      },
    });
    const item = await subscription.monitor(
      { nodeId: SERVER_OBJECT, attributeId: AttributeIds.EventNotifier },
      { samplingInterval: 0, discardOldest: false, queueSize: 10000, filter },
      TimestampsToReturn.Neither,
    );
    item.on("changed", (fields) => {
      emit({ event: Object.fromEntries(names.map((name, i) => [name, plain(fields[i].value)])) });
    });
    return { typeId, fields: names };
  },
};

async function main() {
  const endpoint = process.argv[2];
  if (!endpoint) {
    process.stderr.write("usage: node client.js opc.tcp://host:port/path\n");
    process.exit(2);
  }
  // The client's own certificate (made on first use): in INTEROP_PKI_DIR when set, so parallel runs
  // do not share node-opcua's per-user folder.
  const pki = process.env.INTEROP_PKI_DIR;
  const client = OPCUAClient.create({
    applicationName: "cmm-twin-interop",
    ...(pki ? { clientCertificateManager: new OPCUACertificateManager({ rootFolder: pki, disableFileWatchers: true }) } : {}),
    endpointMustExist: false,
    securityMode: MessageSecurityMode.None,
    securityPolicy: SecurityPolicy.None,
    connectionStrategy: { maxRetry: 3, initialDelay: 200, maxDelay: 2000 },
    requestedSessionTimeout: 600000,
  });
  await client.connect(endpoint);
  const session = await client.createSession(); // anonymous
  emit({ ready: true, endpoint });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      emit({ id: null, ok: false, error: `not JSON: ${err.message}` });
      continue;
    }
    const handler = COMMANDS[cmd.op];
    if (!handler) {
      emit({ id: cmd.id, ok: false, error: `unknown op ${cmd.op}` });
      continue;
    }
    try {
      emit({ id: cmd.id, ok: true, result: await handler(session, cmd) });
    } catch (err) {
      emit({ id: cmd.id, ok: false, error: String(err && err.message ? err.message : err) });
    }
  }
  for (const s of subscriptions) await s.terminate();
  await session.close();
  await client.disconnect();
}

main().catch((err) => {
  process.stderr.write(`interop client: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
