"""Istio's semantic validation of AuthorizationPolicy and PeerAuthentication specs, and
hostmesh's refusal of what it does not implement. Pure: a spec (plain data, already
shaped by the loader's schema) in, a list of ``(location, message)`` out, the location a
tuple of keys and indices under ``spec`` that the loader turns into ``path:line``.

Every rule here refuses a document Istio's own validation refuses (istio/istio
pkg/config/validation, ``ValidateAuthorizationPolicy`` / ``ValidatePeerAuthentication``,
and pkg/config/security), or one whose meaning hostmesh cannot enforce — such a field
dropped silently would widen the policy (an ALLOW naming ``requestPrincipals`` would let
everyone in). docs/policy.md "Validation" lists each rule with its source.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

Problem = tuple[tuple, str]

SOURCE_FIELDS = ("principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts",
                 "notServiceAccounts", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
                 "requestPrincipals", "notRequestPrincipals")
OPERATION_FIELDS = ("ports", "notPorts", "methods", "notMethods", "paths", "notPaths", "hosts", "notHosts")
# request authentication (JWT): hostmesh has none, so nothing naming it can be enforced
UNSUPPORTED_SOURCE = ("requestPrincipals", "notRequestPrincipals")
SUPPORTED_KEYS = ("source.ip", "remote.ip", "source.namespace", "source.principal", "source.serviceAccount",
                  "destination.ip", "destination.port")
EMPTY = "an empty string is not allowed as a value"
_LITERAL = re.compile(r"^[a-zA-Z0-9\-._~%!$&'()+,;:@=]+$")  # RFC 3986 pchar, as Envoy's URI templates


def authorization_problems(spec: dict) -> list[Problem]:
    out: list[Problem] = []
    action = spec.get("action", "ALLOW")
    if spec.get("provider") is not None and action != "CUSTOM":
        out.append((("provider",), f"provider is only for action CUSTOM, found {action}"))
    out += selector_problems(spec.get("selector"))
    rules = spec.get("rules")
    if action == "DENY" and not rules:
        out.append((("rules",) if "rules" in spec else ("action",),
                    "a DENY policy without rules never matches; add a rule {} to deny every request"))
    for i, rule in enumerate(rules or ()):
        out += _rule(("rules", i), rule or {})
    return out


def _rule(at: tuple, rule: dict) -> list[Problem]:
    out: list[Problem] = []
    for name, inner in (("from", "source"), ("to", "operation")):
        if name in rule and not rule[name]:
            out.append((at + (name,), f"{name} must not be empty"))
        for j, item in enumerate(rule.get(name) or ()):
            body = (item or {}).get(inner)
            where = at + (name, j, inner)
            if not body or not any(body.get(f) for f in (SOURCE_FIELDS if inner == "source" else OPERATION_FIELDS)):
                out.append((where if body is not None else at + (name, j),
                            f"{inner} must not be empty (it would match every request)"))
                continue
            out += _source(where, body) if inner == "source" else _operation(where, body)
    for j, cond in enumerate(rule.get("when") or ()):
        out += _condition(at + ("when", j), cond)
    return out


def _source(at: tuple, s: dict) -> list[Problem]:
    out: list[Problem] = []
    for f in UNSUPPORTED_SOURCE:
        if f in s:
            out.append((at + (f,), "request authentication (JWT) is not supported; the policy cannot be enforced"))
    if (any(s.get(f) for f in ("principals", "notPrincipals", "namespaces", "notNamespaces"))
            and any(s.get(f) for f in ("serviceAccounts", "notServiceAccounts"))):
        out.append((at + ("serviceAccounts" if s.get("serviceAccounts") else "notServiceAccounts",),
                    "serviceAccounts cannot be set together with namespaces or principals"))
    for f, vals in s.items():  # only the fields given (the schema allows no others)
        if vals and "" in vals:
            out.append((at + (f,), EMPTY))
        if vals and f in ("serviceAccounts", "notServiceAccounts"):
            out += [(at + (f,), m) for m in service_account_problems(vals)]
    return out


def _operation(at: tuple, o: dict) -> list[Problem]:
    out: list[Problem] = []
    for f, vals in o.items():
        if vals and "" in vals:
            out.append((at + (f,), EMPTY))
        if vals and f in ("paths", "notPaths"):
            out += [(at + (f, k), m) for k, p in enumerate(vals) if (m := path_template_problem(p))]
    return out


def _condition(at: tuple, c: dict) -> list[Problem]:
    key = c.get("key", "")
    values, not_values = c.get("values") or [], c.get("notValues") or []
    if not values and not not_values:
        return [(at, f"when {key}: at least one of values or notValues must be set")]
    problem = key_problem(key)
    if problem:
        return [(at + ("key",), problem)]
    out: list[Problem] = []
    for field, vals in (("values", values), ("notValues", not_values)):
        for m in value_problems(key, vals):
            out.append((at + (field,), f"when {key}: {m}"))
    return out


def key_problem(key: str) -> str | None:
    """Why a ``when`` key is refused (Istio's reasons first, then hostmesh's), or None."""
    if key in SUPPORTED_KEYS:
        return None
    if key.startswith("request.headers"):
        return None if re.fullmatch(r"request\.headers\[[^\[\]]+\]", key) else \
            f"bad key {key!r}: should have the form request.headers[<name>]"
    if key.startswith("request.auth."):
        return f"{key}: request authentication (JWT) is not supported; the policy cannot be enforced"
    if key == "destination.namespace":
        return f"attribute {key} is replaced by metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    if key == "connection.sni" or key.startswith(("experimental.", "request.experimental.")):
        return f"attribute {key} is not supported by hostmesh"
    return f"unknown attribute {key!r}"


def value_problems(key: str, vals) -> list[str]:
    out = [EMPTY] if "" in vals else []
    if key in ("source.ip", "remote.ip", "destination.ip"):
        out += [f"{v!r} is not a CIDR or IP address" for v in vals if v and not _is_ip(v)]
    elif key == "destination.port":
        out += [f"{v!r} is not a port" for v in vals if v and not (str(v).isascii() and str(v).isdigit() and int(v) <= 65535)]
    elif key == "source.serviceAccount":
        out += service_account_problems(vals)
    return out


@lru_cache(maxsize=4096)
def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_network(v, strict=False) if "/" in v else ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def service_account_problems(vals) -> list[str]:
    """``sa`` or ``ns/sa``, no wildcard, at most 16 entries of 320 characters (Istio)."""
    if len(vals) > 16:
        return ["at most 16 service accounts"]
    out = []
    for v in vals:
        ns, slash, sa = v.partition("/")
        if "*" in v:
            out.append(f"{v!r}: a wildcard is not allowed in a service account")
        elif v.count("/") > 1 or not sa and slash or not ns or len(v) > 320:
            out.append(f"{v!r}: expected 'serviceAccount' or 'namespace/serviceAccount'")
    return out


def path_template_problem(path: str) -> str | None:
    """Istio's rules for ``{*}`` (one segment) and ``{**}`` (the rest; last operator)."""
    if "{" not in path and "}" not in path:
        return None
    templated = "{*}" in path or "{**}" in path
    seen_any = False
    for seg in path.strip("/").split("/"):
        if seg in ("{*}", "{**}"):
            if seen_any:
                return f"{path!r}: {{**}} must be the last operator"
            seen_any = seg == "{**}"
            continue
        if "{" in seg or "}" in seg:
            return f"{path!r}: '{{' or '}}' beyond a supported path template ({{*}} or {{**}})"
        if templated and seg and not _LITERAL.match(seg):
            return f"{path!r}: segment {seg!r} is not a valid literal"
    return None


def selector_problems(selector, at: tuple = ("selector", "matchLabels")) -> list[Problem]:
    out: list[Problem] = []
    for k, v in ((selector or {}).get("matchLabels") or {}).items():
        if k == "":
            out.append((at, "an empty label key is not supported in a selector"))
        if "*" in k or "*" in str(v):
            out.append((at + (k,), f"a wildcard is not supported in a selector: {k}={v}"))
    return out


def peer_problems(spec: dict) -> list[Problem]:
    out = selector_problems(spec.get("selector"))
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if "portLevelMtls" in spec:
        if not spec["portLevelMtls"]:
            out.append((("portLevelMtls",), "portLevelMtls, if set, must have at least one port"))
        elif not labels:
            out.append((("portLevelMtls",), "a mesh- or namespace-wide PeerAuthentication cannot have portLevelMtls"))
    return out
