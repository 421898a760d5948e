"""API response bytes -> the parts of each object that ``agent.k8s.model.slim`` reads.

Pure: bytes in, plain dicts out. With msgspec installed, a watch event or a list page
is decoded into typed dicts that name only the fields discovery reads, so the
decoder skips everything else (``managedFields``, containers, volumes, conditions, the
status discovery ignores) without building a Python object for it: a 7 KB pod decodes
in a few microseconds instead of ~40 with the standard library, and what survives is a
small dict, built as it is parsed. Without msgspec, or for anything the shapes do not fit (a field of an
unexpected type, an ``ERROR`` event's Status), the standard library decodes the whole
object, as before. Either way ``slim`` gets the same answer: a pruned object holds
every field it reads (property-tested against the whole object). It decides nothing
about the objects; malformed JSON raises ``ValueError`` like ``json.loads``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agent.k8s.listing import scan_list

try:  # optional: the standard library decodes the same objects, slower
    import msgspec
except ImportError:  # pragma: no cover - exercised by the fallback tests via HAVE_MSGSPEC
    msgspec = None

HAVE_MSGSPEC = msgspec is not None

if msgspec is not None:
    from typing import TypedDict

    # Each shape names the fields discovery reads; ``total=False``: an absent field stays
    # absent (slim tells "missing" from "null" in a few places, e.g. a targetPort).
    # ``Any``: the value is kept whole, whatever its type, and slim judges it as before.
    # TypedDicts, not Structs: msgspec builds the plain dicts slim reads while it parses
    # (a Struct would be converted to dicts afterwards, one more pass and one more copy
    # of every value per event).
    def _shape(name: str, fields: dict) -> type:
        return TypedDict(name, fields, total=False)  # type: ignore[operator]

    _Meta = _shape("_Meta", dict.fromkeys(("name", "namespace", "uid", "labels", "annotations", "resourceVersion",
                                           "deletionTimestamp", "creationTimestamp"), Any))
    _Pod = _shape("_Pod", {"metadata": _Meta | None,
                           "spec": _shape("_PodSpec", dict.fromkeys(("hostNetwork", "nodeName",
                                                                     "serviceAccountName"), Any)) | None,
                           "status": _shape("_PodStatus", dict.fromkeys(("phase", "podIP", "podIPs"), Any)) | None})
    _Node = _shape("_Node", {"metadata": _Meta | None,
                             "spec": _shape("_NodeSpec", dict.fromkeys(("podCIDR", "podCIDRs"), Any)) | None,
                             "status": _shape("_NodeStatus", {"addresses": Any}) | None})
    _Service = _shape("_Service", {"metadata": _Meta | None,
                                   "spec": _shape("_ServiceSpec", dict.fromkeys(("type", "clusterIP", "clusterIPs",
                                                                                 "ports"), Any)) | None})
    _Slice = _shape("_Slice", {"metadata": _Meta | None, "ports": Any,
                               "endpoints": list[_shape("_Endpoint", dict.fromkeys(("addresses", "conditions"),
                                                                                   Any))] | None})
    _Policy = _shape("_Policy", {"apiVersion": Any, "metadata": _Meta | None, "spec": Any})

    _SHAPES: dict[str, type] = {"pods": _Pod, "nodes": _Node, "services": _Service, "endpointslices": _Slice}

    def _event_type(shape: type) -> type:
        return _shape(f"{shape.__name__}Event", {"type": Any, "object": shape | None})

    def _list_type(shape: type) -> type:
        return _shape(f"{shape.__name__}List", {"metadata": Any, "items": list[shape] | None})

    _EVENTS = {kind: msgspec.json.Decoder(_event_type(shape)) for kind, shape in _SHAPES.items()}
    _LISTS = {kind: msgspec.json.Decoder(_list_type(shape)) for kind, shape in _SHAPES.items()}
    _POLICY_EVENT = msgspec.json.Decoder(_event_type(_Policy))
    _POLICY_LIST = msgspec.json.Decoder(_list_type(_Policy))


def decode_event(kind: str, line: bytes | str) -> tuple[Any, dict]:
    """One watch event line: (type, object). The object holds what slim reads (and
    ``metadata.resourceVersion``); an ``ERROR`` event's Status object is whole."""
    if msgspec is not None:
        try:
            ev = _EVENTS.get(kind, _POLICY_EVENT).decode(line)
        except msgspec.DecodeError:  # and ValidationError: a field of a type the structs do not
            pass  # expect, or JSON msgspec refuses: the standard library judges it, below
        else:
            etype = ev.get("type")
            if etype != "ERROR":
                return etype, ev.get("object") or {}
    # as the client's line reader did: bytes that are not UTF-8 become U+FFFD
    ev = json.loads(line.decode("utf-8", "replace") if isinstance(line, bytes | bytearray) else line)
    if not isinstance(ev, dict):
        raise ValueError("watch event: not an object")
    return ev.get("type"), ev.get("object") or {}


def decode_list(kind: str, data: bytes, on_item: Callable[[dict], None]) -> dict:
    """A list page: every item (pruned) to ``on_item`` in order; the other top-level
    fields (``metadata``: resourceVersion, continue) returned."""
    if msgspec is not None:
        try:
            page = _LISTS.get(kind, _POLICY_LIST).decode(data)
        except msgspec.DecodeError:  # as for events
            pass
        else:
            items = page.pop("items", None) or ()
            for i in range(len(items)):  # each item let go once handed over
                item, items[i] = items[i], None
                on_item(item)
            return {"metadata": page["metadata"]} if "metadata" in page else {}
    return scan_list(data.decode() if isinstance(data, bytes | bytearray) else data, on_item)
