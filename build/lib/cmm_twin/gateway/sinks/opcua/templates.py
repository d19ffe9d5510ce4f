"""Characteristic objects cloned from a template, so a thousand of them cost megabytes, not hundreds.

asyncua's `add_nodes` checks every item and gives each node its own copy of every attribute:
about 7 KB and 0.3 ms per node, 25 nodes per characteristic (180 MB and 8 s for 1,000
characteristics, measured). The first characteristic of each kind (length or angle) is built
with `add_nodes`, so asyncua checks it; each further one is a copy of it made directly in the
address space: new NodeIds, new values and new references between its own nodes, while every
attribute that is the same for all characteristics (names, descriptions, data types, access
levels, engineering units) and every reference to a shared node (types, reference types) is one
object shared by all. Those are never written: the gateway writes only Value attributes (per
node), and clients cannot write at all (WriteMask 0, no write access), so sharing them is safe.
Relies on asyncua's NodeData / AttributeValue (pinned version; tests compare a clone with the
node asyncua builds, through a real client).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import cast

from asyncua import ua
from asyncua.server.address_space import AddressSpace as UaAddressSpace
from asyncua.server.address_space import AttributeValue, NodeData
from asyncua.ua.attribute_ids import AttributeIds

from cmm_twin.gateway.sinks.opcua.address_space import _nid

_PER_NODE = frozenset({AttributeIds.NodeId, AttributeIds.Value})
_NAMED = (AttributeIds.BrowseName, AttributeIds.DisplayName, AttributeIds.Description)


def _text_id(nodeid: ua.NodeId) -> str:
    return cast("str", nodeid.Identifier)


class NodeTemplate:
    """A subtree (a root object and its descendants, string NodeIds under the root's id) built
    once with add_nodes, copied by `clone` under another parent with another root name."""

    def __init__(self, aspace: UaAddressSpace, root: ua.NodeId, parent: ua.NodeId, nodes: Iterable[ua.NodeId]) -> None:
        """Take the template from `aspace` right after its nodes were added (their values are the
        initial values every clone starts with)."""
        self.aspace = aspace
        self.root = root
        self.parent = parent
        self.prefix = _text_id(root)
        self.nodes = list(nodes)
        self.initial = {
            nodeid: aspace[nodeid].attributes[AttributeIds.Value].value
            for nodeid in self.nodes
            if AttributeIds.Value in aspace[nodeid].attributes
        }
        """The Value each node started with (a written template node holds another since)."""
        self._members = set(self.nodes)
        self._suffixes = [_text_id(nodeid)[len(self.prefix) :] for nodeid in self.nodes]
        self._shared = {
            nodeid: {k: v for k, v in aspace[nodeid].attributes.items() if k not in _PER_NODE} for nodeid in self.nodes
        }
        """Each node's attributes that every copy shares (all but NodeId and Value)."""

    def clone(self, root: ua.NodeId, parent: ua.NodeId, name: ua.QualifiedName) -> None:
        """Add a copy of the template as `root` (BrowseName, DisplayName and Description `name`)
        under `parent`, which must exist and hold no node of that id yet."""
        ns = root.NamespaceIndex
        base = _text_id(root)
        new_ids = {old: _nid(base + suffix, ns) for old, suffix in zip(self.nodes, self._suffixes, strict=True)}
        names = {
            AttributeIds.BrowseName: ua.Variant(name, ua.VariantType.QualifiedName),
            AttributeIds.DisplayName: ua.Variant(ua.LocalizedText(name.Name), ua.VariantType.LocalizedText),
            AttributeIds.Description: ua.Variant(ua.LocalizedText(name.Name), ua.VariantType.LocalizedText),
        }
        for old, new in new_ids.items():
            source = self.aspace[old]
            node = NodeData(new)
            attributes = dict(self._shared[old])
            attributes[AttributeIds.NodeId] = AttributeValue(ua.DataValue(ua.Variant(new, ua.VariantType.NodeId)))
            initial = self.initial.get(old)
            if initial is not None:
                attributes[AttributeIds.Value] = AttributeValue(dataclasses.replace(initial))
            if old == self.root:
                for attribute in _NAMED:
                    attributes[attribute] = AttributeValue(ua.DataValue(names[attribute]))
            node.attributes = attributes
            node.references = [self._reference(r, new_ids, parent, name) for r in source.references]
            self.aspace[new] = node
        for reference in self.aspace[self.parent].references:
            if reference.NodeId == self.root and reference.IsForward:
                renamed = _retarget(reference, root, name, ua.LocalizedText(name.Name))
                self.aspace[parent].references.append(renamed)
                break

    def _reference(
        self,
        reference: ua.ReferenceDescription,
        new_ids: dict[ua.NodeId, ua.NodeId],
        parent: ua.NodeId,
        name: ua.QualifiedName,
    ) -> ua.ReferenceDescription:
        """The clone's copy of a template node's reference: to a template node -> to its copy, the
        root's to the template's parent -> to `parent`; a shared node's is shared."""
        target = reference.NodeId
        if target in self._members:
            if target == self.root:
                return _retarget(reference, new_ids[target], name, ua.LocalizedText(name.Name))
            return _retarget(reference, new_ids[target])
        if target == self.parent and not reference.IsForward:
            return _retarget(reference, parent)
        return reference


def _retarget(
    reference: ua.ReferenceDescription,
    target: ua.NodeId,
    name: ua.QualifiedName | None = None,
    display: ua.LocalizedText | None = None,
) -> ua.ReferenceDescription:
    """`reference` pointing to `target` (renamed when `name` is given); faster than dataclasses.replace."""
    return ua.ReferenceDescription(
        ReferenceTypeId=reference.ReferenceTypeId,
        IsForward=reference.IsForward,
        NodeId=target,
        BrowseName=name if name is not None else reference.BrowseName,
        DisplayName=display if display is not None else reference.DisplayName,
        NodeClass=reference.NodeClass,
        TypeDefinition=reference.TypeDefinition,
    )
