"""Policy files -> validated documents, or ``path:line: field: message`` errors.

Accepts YAML (one or many documents) or JSON (a document or a list), ``apiVersion``
``security.istio.io/v1`` or ``v1beta1``, kinds ``AuthorizationPolicy`` and
``PeerAuthentication``. Any invalid document rejects the whole file; nothing is applied
from it. Unknown fields are errors (a typo must not silently widen a policy).
"""

from __future__ import annotations

import gc
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

import yaml

from agent import schema, schema_fast, yamlpos
from agent.rbac import validate
from agent.rbac.model import (
    AuthorizationPolicy,
    Condition,
    Operation,
    PeerAuthentication,
    Rule,
    Source,
)

API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
# Documents in one file or body from which msgspec is loaded for the fast path (1.3 MiB,
# kept): 1,000 policies validate ~12 ms sooner with it (10,000: 0.49 -> 0.34 s from JSON).
FAST_FROM = 1000
CUSTOM = "CUSTOM"


class PolicyError(ValueError):
    """An invalid policy file; str() is one ``path:line: message`` per problem."""


def _cidr(v: str) -> str:
    try:
        if "/" in v:
            ipaddress.ip_network(v, strict=False)
        else:
            ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a CIDR or IP address") from None
    return v


def _port(v: str | int) -> str:
    s = str(v)
    if not s.isdigit() or not 0 < int(s) < 65536:
        raise ValueError(f"{v!r} is not a port")
    return s


def _cidrs(v: list[str]) -> list[str]:
    return [_cidr(x) for x in v]


def _ports(v: list) -> list[str]:
    return [_port(x) for x in v]


def _port_keys(v: dict) -> dict:
    for k in v:
        _port(k)
    return v


def _many():
    # () for a list that is absent: these models are read once, by _build_*, never changed
    # (a list made per absent field was a third of a policy's validation)
    return schema.field(())


@schema.model
class SourceM:
    principals: list[str] = _many()
    notPrincipals: list[str] = _many()
    namespaces: list[str] = _many()
    notNamespaces: list[str] = _many()
    serviceAccounts: list[str] = _many()
    notServiceAccounts: list[str] = _many()
    ipBlocks: list[str] = _many()
    notIpBlocks: list[str] = _many()
    remoteIpBlocks: list[str] = _many()
    notRemoteIpBlocks: list[str] = _many()
    requestPrincipals: list[str] = _many()
    notRequestPrincipals: list[str] = _many()

    _checks = {"ipBlocks": _cidrs, "notIpBlocks": _cidrs, "remoteIpBlocks": _cidrs, "notRemoteIpBlocks": _cidrs}


@schema.model
class OperationM:
    ports: list[str | int] = _many()
    notPorts: list[str | int] = _many()
    methods: list[str] = _many()
    notMethods: list[str] = _many()
    paths: list[str] = _many()
    notPaths: list[str] = _many()
    hosts: list[str] = _many()
    notHosts: list[str] = _many()

    _checks = {"ports": _ports, "notPorts": _ports}


@schema.model
class FromM:
    source: SourceM = schema.field(factory=SourceM)


@schema.model
class ToM:
    operation: OperationM = schema.field(factory=OperationM)


@schema.model
class WhenM:
    key: str
    values: list[str] = _many()
    notValues: list[str] = _many()


@schema.model
class RuleM:
    from_: list[FromM] = schema.field((), alias="from")
    to: list[ToM] = _many()
    when: list[WhenM] = _many()


@schema.model
class SelectorM:
    matchLabels: dict[str, str] = schema.field(factory=dict)


def _action(v: Any) -> Any:
    # checked before the Literal, which keeps CUSTOM so that it gets its own "not supported" line
    if v in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
        return v
    hint = f" (upper case: {v.upper()})" if isinstance(v, str) and v.upper() in ("ALLOW", "DENY", "AUDIT") else ""
    raise ValueError(f"{v!r} is not an action: use ALLOW, DENY or AUDIT{hint}")


@schema.model
class AuthzSpecM:
    selector: SelectorM | None = None
    targetRef: dict | None = None
    targetRefs: list[dict] | None = None
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: dict | None = None
    rules: list[RuleM] = _many()

    _before = {"action": _action}


@schema.model
class PortMtlsM:
    mode: Literal["STRICT", "PERMISSIVE", "DISABLE", "UNSET"] = "UNSET"


@schema.model
class PeerSpecM:
    selector: SelectorM | None = None
    mtls: PortMtlsM | None = None
    portLevelMtls: dict[str, PortMtlsM] = schema.field(factory=dict)

    _checks = {"portLevelMtls": _port_keys}


@schema.model
class MetaM:
    name: Annotated[str, schema.Range(min_length=1, max_length=253)]
    namespace: str = "default"
    annotations: dict[str, str] = schema.field(factory=dict)
    labels: dict[str, str] = schema.field(factory=dict)

    _extra = "allow"


def _api(v: str) -> str:
    if v not in API_VERSIONS:
        raise ValueError(f"apiVersion {v!r} is not one of {', '.join(API_VERSIONS)}")
    return v


@schema.model
class DocM:
    apiVersion: str
    kind: Literal["AuthorizationPolicy", "PeerAuthentication"]
    metadata: MetaM
    spec: dict[str, Any] | None = None
    status: dict | None = None

    _checks = {"apiVersion": _api}


def _t(v) -> tuple:
    return tuple(v)


def _sa(ns: str, values) -> tuple[str, ...]:
    """Istio: a service account without a namespace is one of the policy's namespace."""
    return tuple(v if "/" in v else f"{ns}/{v}" for v in values)


def _net(values: tuple) -> tuple:
    return tuple(ipaddress.ip_network(x, strict=False) for x in values) if values else ()


def _source(ns: str, s: SourceM) -> Source:
    # positional, each empty field without a call: one watch event builds these on the
    # event loop, where every step is a cold cache miss (docs/policy.md)
    return Source(tuple(s.principals), tuple(s.notPrincipals), tuple(s.namespaces), tuple(s.notNamespaces),
                  _sa(ns, s.serviceAccounts) if s.serviceAccounts else (),
                  _sa(ns, s.notServiceAccounts) if s.notServiceAccounts else (),
                  _net((*s.ipBlocks, *s.remoteIpBlocks)), _net((*s.notIpBlocks, *s.notRemoteIpBlocks)))


def _operation(o: OperationM) -> Operation:
    return Operation(tuple(map(int, o.ports)) if o.ports else (), tuple(map(int, o.notPorts)) if o.notPorts else (),
                     tuple(o.methods), tuple(o.notMethods), tuple(o.paths), tuple(o.notPaths),
                     tuple(o.hosts), tuple(o.notHosts))


def _build_authz(meta: MetaM, spec: AuthzSpecM) -> AuthorizationPolicy:
    rules = []
    ns = meta.namespace
    for r in spec.rules:
        sources = tuple(_source(ns, f.source) for f in r.from_)
        ops = tuple(_operation(t.operation) for t in r.to)
        conds = tuple(Condition(w.key, _sa(ns, w.values), _sa(ns, w.notValues)) if w.key == "source.serviceAccount"
                      else Condition(w.key, _t(w.values), _t(w.notValues)) for w in r.when) if r.when else ()
        rules.append(Rule(sources, ops, conds))
    selector = tuple(sorted(spec.selector.matchLabels.items())) if spec.selector else None
    dry = meta.annotations.get("istio.io/dry-run", "false").lower() == "true"
    return AuthorizationPolicy(meta.namespace, meta.name, spec.action, selector, tuple(rules), dry)


def _build_peer(meta: MetaM, spec: PeerSpecM) -> PeerAuthentication:
    selector = tuple(sorted(spec.selector.matchLabels.items())) if spec.selector else None
    ports = tuple(sorted((int(k), v.mode) for k, v in spec.portLevelMtls.items()))
    return PeerAuthentication(meta.namespace, meta.name, spec.mtls.mode if spec.mtls else "UNSET", selector, ports)


def _docs(text: str, path: str, lines: bool = True):
    # bounded parsing (size, documents, depth, aliases) lives in yamlpos; the fast path
    # leaves line numbers to the second, line-numbered pass (10,000 policies in < 1 s)
    try:
        docs = yamlpos.load_documents(text, path, lines)
    except yamlpos.YamlError as e:
        raise PolicyError(str(e)) from None
    if len(docs) >= FAST_FROM:
        schema_fast.load()
    return _one_by_one(docs)


def _one_by_one(docs: list):
    """Each parsed document freed once it is validated: freeing 10,000 at the end is one
    20 ms stretch holding the GIL (loading runs beside the deciding thread)."""
    docs.reverse()
    while docs:
        yield docs.pop()


def load_documents(text: str, path: str = "<policy>", root_namespace: str = "istio-system") -> list:
    """Every document in ``text`` or a PolicyError naming every problem with its line."""
    # Loading builds hundreds of thousands of small objects, none of them garbage; left
    # on, the cyclic collector walks them again and again (a third of the load time for
    # 10,000 policies). Reference counting still frees everything.
    paused = gc.isenabled()
    gc.disable()
    try:
        try:
            return _load(text, path, lines=False)
        except (PolicyError, yaml.YAMLError, ValueError, TypeError):  # ryaml's errors are ValueErrors
            return _load(text, path, lines=True)  # again, with line numbers for the errors
    finally:
        if paused:
            gc.enable()


def load_object(data: Any, path: str = "<policy>", root_namespace: str = "istio-system") -> list:
    """``load_documents(json.dumps(data), path, root_namespace)`` without the text: a document
    already decoded (a watch event's object) is validated as it is, with the same result
    and the same errors (all on line 1, as in the one-line JSON). It never changes ``data``."""
    if not isinstance(data, (dict, list)):  # its JSON text is read as YAML (``null``: no document)
        import json

        return load_documents(json.dumps(data), path, root_namespace)
    try:
        docs = yamlpos.object_docs(data, path)
    except yamlpos.YamlError as e:
        raise PolicyError(str(e)) from None
    return _validated(docs)


def stand_in(data: Any, path: str = "<policy>", root_namespace: str = "istio-system") -> list:
    """What a watched AuthorizationPolicy or PeerAuthentication the loader refuses is enforced
    as until it is fixed, so a typo never enforces less than the operator wrote (and the same
    across a restart: it depends on the object only, never on an earlier version). Read from
    the object as far as it can be: a DENY, a CUSTOM or an action that cannot be read -> DENY
    every request to its workloads (``rules: [{}]``); an ALLOW -> ALLOW nothing (no rules: its
    workloads admit only what another ALLOW admits); an AUDIT -> nothing (it never decides);
    a PeerAuthentication -> STRICT mutual TLS on every port (its mode or port modes could have
    relaxed it only where the operator wrote so, and that is what cannot be read). Its
    workloads are its ``selector.matchLabels`` when those are strings, else every workload of
    its namespace (broader, never narrower); ``istio.io/dry-run`` is kept when it can be read.
    ``[]`` when no stand-in can be built (no usable name or namespace)."""
    if not isinstance(data, dict):
        return []
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
    kind = "PeerAuthentication" if data.get("kind") == "PeerAuthentication" else "AuthorizationPolicy"
    action = spec.get("action", "ALLOW")
    if kind == "PeerAuthentication":
        out_spec: dict = {"mtls": {"mode": "STRICT"}}
    elif action == "AUDIT":
        return []
    else:
        out_spec = {"action": "ALLOW"} if action == "ALLOW" else {"action": "DENY", "rules": [{}]}
    sel = spec.get("selector")
    labels = sel.get("matchLabels") if isinstance(sel, dict) else None
    if isinstance(labels, dict) and labels and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        out_spec["selector"] = {"matchLabels": dict(labels)}
    out_meta = {k: meta[k] for k in ("name", "namespace") if isinstance(meta.get(k), str)}
    notes = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    if isinstance(notes.get("istio.io/dry-run"), str) and kind == "AuthorizationPolicy":
        out_meta["annotations"] = {"istio.io/dry-run": notes["istio.io/dry-run"]}
    doc = {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": out_meta, "spec": out_spec}
    try:
        return load_object(doc, path, root_namespace)
    except PolicyError:
        if "selector" not in out_spec:
            return []
    # its selector itself refused ("app: web*", an empty key): every workload of its namespace
    del out_spec["selector"]
    try:
        return load_object(doc, path, root_namespace)
    except PolicyError:
        return []


def _expand_lists(docs: Iterable[yamlpos.Doc]) -> Iterator[yamlpos.Doc]:
    """``kind: List`` (what ``kubectl get -o yaml`` prints) -> its ``items``, each keeping its
    lines. A generator, so ``_one_by_one`` still frees each parsed document once it is
    validated (a list here held all 10,000 and freed them at once: a 13 ms stretch holding
    the GIL, the deciding thread's worst delay while they loaded)."""
    for doc in docs:
        data = doc.data
        if not (isinstance(data, dict) and data.get("kind") == "List" and isinstance(data.get("items"), list)):
            yield doc
            continue
        for i, item in enumerate(data["items"]):
            sub = {loc[2:]: n for loc, n in doc.lines.items() if loc[:2] == ("items", i)}
            yield yamlpos.Doc(data=item, path=doc.path, line=doc.line_of(("items", i)), lines=sub)


def _load(text: str, path: str, lines: bool) -> list:
    return _validated(_docs(text, path, lines))


def _model(cls, data) -> tuple[Any, list]:
    """``schema.convert``, by msgspec when every value has its type (a watch event's object:
    a fifth of the time), by the checker otherwise (and for the errors)."""
    one = schema_fast.convert(cls, data)
    return (one, []) if one is not None else schema.convert(cls, data)


def _validated(docs) -> list:
    out, errors = [], []
    for doc in _expand_lists(docs):
        if isinstance(doc.data, dict) and str(doc.data.get("apiVersion", "")).startswith("networking.istio.io/"):
            continue  # DestinationRule, VirtualService: agent.traffic.loader reads them
        if not isinstance(doc.data, dict):
            errors.append(f"{doc.where()}: a policy document must be a mapping")
            continue
        d, errs = _model(DocM, doc.data)
        if errs:
            errors += yamlpos.schema_errors(doc, errs)
            continue
        spec, errs = _model(AuthzSpecM if d.kind == "AuthorizationPolicy" else PeerSpecM, d.spec or {})
        if errs:
            errors += yamlpos.schema_errors(doc, errs, prefix=("spec",))
            continue
        problems = (validate.authorization_problems if d.kind == "AuthorizationPolicy"
                    else validate.peer_problems)(d.spec or {})
        if problems:
            errors += [f"{doc.where(('spec',) + loc)}: {schema.dotted(('spec',) + loc)}: {msg}" for loc, msg in problems]
            continue
        if d.kind == "AuthorizationPolicy":
            if spec.action == CUSTOM:
                errors.append(f"{doc.where(('spec', 'action'))}: spec.action: CUSTOM (external authorization) is not supported")
                continue
            if spec.targetRef or spec.targetRefs:
                errors.append(f"{doc.where(('spec',))}: spec.targetRef: waypoint/gateway targets are not supported; use selector")
                continue
            out.append(_build_authz(d.metadata, spec))
        else:
            out.append(_build_peer(d.metadata, spec))
    if errors:
        raise PolicyError("\n".join(_fix_names(e) for e in errors))
    return out


def _fix_names(line: str) -> str:
    return line.replace(".from_", ".from").replace("spec.rules", "spec.rules")


def to_document(doc) -> dict:
    """The Istio document of a loaded policy, as a mapping: ``load_documents`` of its JSON
    gives back an equal value (``remoteIpBlocks`` come back as ``ipBlocks``, their
    meaning here being the same, docs/policy.md)."""
    meta: dict[str, Any] = {"name": doc.name, "namespace": doc.namespace}
    spec: dict[str, Any] = {}
    if doc.selector is not None:
        spec["selector"] = {"matchLabels": dict(doc.selector)}
    if isinstance(doc, PeerAuthentication):
        if doc.mode != "UNSET":
            spec["mtls"] = {"mode": doc.mode}
        if doc.port_modes:
            spec["portLevelMtls"] = {str(p): {"mode": m} for p, m in doc.port_modes}
        return {"apiVersion": API_VERSIONS[0], "kind": "PeerAuthentication", "metadata": meta, "spec": spec}
    if doc.dry_run:
        meta["annotations"] = {"istio.io/dry-run": "true"}
    spec["action"] = doc.action
    spec["rules"] = [_rule_doc(r) for r in doc.rules]
    return {"apiVersion": API_VERSIONS[0], "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def _fields(obj, names: dict[str, str]) -> dict:
    return {key: [str(v) for v in getattr(obj, attr)] for attr, key in names.items() if getattr(obj, attr)}


_SOURCE_KEYS = {"principals": "principals", "not_principals": "notPrincipals", "namespaces": "namespaces",
                "not_namespaces": "notNamespaces", "service_accounts": "serviceAccounts",
                "not_service_accounts": "notServiceAccounts", "ip_blocks": "ipBlocks", "not_ip_blocks": "notIpBlocks"}
_OPERATION_KEYS = {"ports": "ports", "not_ports": "notPorts", "methods": "methods", "not_methods": "notMethods",
                   "paths": "paths", "not_paths": "notPaths", "hosts": "hosts", "not_hosts": "notHosts"}


def _rule_doc(r: Rule) -> dict:
    out: dict[str, Any] = {}
    if r.sources:
        out["from"] = [{"source": _fields(s, _SOURCE_KEYS)} for s in r.sources]
    if r.operations:
        out["to"] = [{"operation": _fields(o, _OPERATION_KEYS)} for o in r.operations]
    if r.conditions:
        out["when"] = [{"key": c.key, **({"values": list(c.values)} if c.values else {}),
                        **({"notValues": list(c.not_values)} if c.not_values else {})} for c in r.conditions]
    return out
