"""API response bytes -> the parts of each object that ``agent.k8s.model.slim`` reads.

Pure: bytes in, plain dicts out. With msgspec installed, a watch event or a list page
is decoded into typed structs that name only the fields discovery reads, so the
decoder skips everything else (``managedFields``, containers, volumes, conditions, the
status discovery ignores) without building a Python object for it: a 7 KB pod decodes
in a few microseconds instead of ~40 with the standard library, and what survives is a
small dict. Without msgspec, or for anything the structs do not fit (a field of an
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
    from msgspec import UNSET, Struct

    # Each field defaults to UNSET, so an absent field stays absent in the dict (slim
    # tells "missing" from "null" in a few places, e.g. a targetPort). ``Any``: the
    # value is kept whole, whatever its type, and slim judges it as before.
    class _Meta(Struct):
        name: Any = UNSET
        namespace: Any = UNSET
        uid: Any = UNSET
        labels: Any = UNSET
        annotations: Any = UNSET
        resourceVersion: Any = UNSET  # noqa: N815 - the API's names
        deletionTimestamp: Any = UNSET  # noqa: N815
        creationTimestamp: Any = UNSET  # noqa: N815

    class _PodSpec(Struct):
        hostNetwork: Any = UNSET  # noqa: N815
        nodeName: Any = UNSET  # noqa: N815
        serviceAccountName: Any = UNSET  # noqa: N815

    class _PodStatus(Struct):
        phase: Any = UNSET
        podIP: Any = UNSET  # noqa: N815
        podIPs: Any = UNSET  # noqa: N815

    class _Pod(Struct):
        metadata: _Meta | None = UNSET  # type: ignore[assignment]
        spec: _PodSpec | None = UNSET  # type: ignore[assignment]
        status: _PodStatus | None = UNSET  # type: ignore[assignment]

    class _NodeSpec(Struct):
        podCIDR: Any = UNSET  # noqa: N815
        podCIDRs: Any = UNSET  # noqa: N815

    class _NodeStatus(Struct):
        addresses: Any = UNSET

    class _Node(Struct):
        metadata: _Meta | None = UNSET  # type: ignore[assignment]
        spec: _NodeSpec | None = UNSET  # type: ignore[assignment]
        status: _NodeStatus | None = UNSET  # type: ignore[assignment]

    class _ServiceSpec(Struct):
        type: Any = UNSET
        clusterIP: Any = UNSET  # noqa: N815
        clusterIPs: Any = UNSET  # noqa: N815
        ports: Any = UNSET

    class _Service(Struct):
        metadata: _Meta | None = UNSET  # type: ignore[assignment]
        spec: _ServiceSpec | None = UNSET  # type: ignore[assignment]

    class _Endpoint(Struct):
        addresses: Any = UNSET
        conditions: Any = UNSET

    class _Slice(Struct):
        metadata: _Meta | None = UNSET  # type: ignore[assignment]
        ports: Any = UNSET
        endpoints: list[_Endpoint] | None = UNSET  # type: ignore[assignment]

    class _Policy(Struct):
        apiVersion: Any = UNSET  # noqa: N815
        metadata: _Meta | None = UNSET  # type: ignore[assignment]
        spec: Any = UNSET

    _SHAPES: dict[str, type] = {"pods": _Pod, "nodes": _Node, "services": _Service, "endpointslices": _Slice}

    def _event_type(shape: type) -> type:
        return msgspec.defstruct(f"{shape.__name__}Event", [("type", Any, UNSET), ("object", shape | None, UNSET)])

    def _list_type(shape: type) -> type:
        return msgspec.defstruct(f"{shape.__name__}List", [("metadata", Any, UNSET), ("items", list[shape] | None,
                                                                                      UNSET)])

    _EVENTS = {kind: msgspec.json.Decoder(_event_type(shape)) for kind, shape in _SHAPES.items()}
    _LISTS = {kind: msgspec.json.Decoder(_list_type(shape)) for kind, shape in _SHAPES.items()}
    _POLICY_EVENT = msgspec.json.Decoder(_event_type(_Policy))
    _POLICY_LIST = msgspec.json.Decoder(_list_type(_Policy))
    _to_builtins = msgspec.to_builtins


def _plain(obj) -> Any:
    return _to_builtins(obj) if obj is not None else None


def decode_event(kind: str, line: bytes | str) -> tuple[Any, dict]:
    """One watch event line: (type, object). The object holds what slim reads (and
    ``metadata.resourceVersion``); an ``ERROR`` event's Status object is whole."""
    if msgspec is not None:
        try:
            ev = _EVENTS.get(kind, _POLICY_EVENT).decode(line)
        except msgspec.DecodeError:  # and ValidationError: a field of a type the structs do not
            pass  # expect, or JSON msgspec refuses: the standard library judges it, below
        else:
            if ev.type != "ERROR":
                return (None if ev.type is UNSET else ev.type), (_plain(ev.object) if ev.object is not UNSET else {})
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
            items, page.items = page.items, None
            for item in items if items is not UNSET and items is not None else ():
                on_item(_to_builtins(item))
            return {} if page.metadata is UNSET else {"metadata": page.metadata}
    return scan_list(data.decode() if isinstance(data, bytes | bytearray) else data, on_item)
