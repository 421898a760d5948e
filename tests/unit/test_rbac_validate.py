"""Issue 15 items 3 and 4: every document Istio's validation refuses, and every field
hostmesh cannot enforce, refuses the file with ``path:line: field: message``. One row
per case: the spec (lines 5 on of the file), the exact error line."""

import pytest

from agent.rbac.loader import PolicyError, load_documents

HEAD = "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: p, namespace: shop}}\nspec:\n"


def refused(spec: str, kind: str = "AuthorizationPolicy") -> str:
    text = HEAD.format(kind=kind) + spec
    with pytest.raises(PolicyError) as e:
        load_documents(text, "p.yaml")
    return str(e.value)


CASES = [
    # item 3: unsupported fields refuse instead of being dropped
    ("request_principals", "  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"*\"]\n",
     "p.yaml:8: spec.rules[0].from[0].source.requestPrincipals: request authentication (JWT) is not supported; "
     "the policy cannot be enforced"),
    ("not_request_principals", "  rules:\n  - from:\n    - source:\n        namespaces: [a]\n"
     "        notRequestPrincipals: [x]\n",
     "p.yaml:9: spec.rules[0].from[0].source.notRequestPrincipals: request authentication (JWT) is not supported; "
     "the policy cannot be enforced"),
    ("request_auth_claims", "  rules:\n  - when:\n    - key: request.auth.claims[iss]\n      values: [x]\n",
     "p.yaml:7: spec.rules[0].when[0].key: request.auth.claims[iss]: request authentication (JWT) is not "
     "supported; the policy cannot be enforced"),
    ("request_auth_principal", "  rules:\n  - when:\n    - key: request.auth.principal\n      values: [x]\n",
     "p.yaml:7: spec.rules[0].when[0].key: request.auth.principal: request authentication (JWT) is not "
     "supported; the policy cannot be enforced"),
    ("provider_on_allow", "  provider: {name: ext}\n  rules:\n  - {}\n",
     "p.yaml:5: spec.provider: provider is only for action CUSTOM, found ALLOW"),
    ("unknown_field", "  rules:\n  - to:\n    - operation:\n        pathz: [/a]\n",
     "p.yaml:8: spec.rules[0].to[0].operation.pathz: unknown field"),
    ("connection_sni", "  rules:\n  - when:\n    - key: connection.sni\n      values: [x]\n",
     "p.yaml:7: spec.rules[0].when[0].key: attribute connection.sni is not supported by hostmesh"),
    ("unknown_key", "  rules:\n  - when:\n    - key: source.nonsense\n      values: [x]\n",
     "p.yaml:7: spec.rules[0].when[0].key: unknown attribute 'source.nonsense'"),
    # item 4: Istio's validation mirrored
    ("empty_source", "  action: DENY\n  rules:\n  - from:\n    - source: {}\n",
     "p.yaml:8: spec.rules[0].from[0].source: source must not be empty (it would match every request)"),
    ("empty_operation", "  action: DENY\n  rules:\n  - to:\n    - operation: {}\n",
     "p.yaml:8: spec.rules[0].to[0].operation: operation must not be empty (it would match every request)"),
    ("from_without_source", "  rules:\n  - from:\n    - {}\n",
     "p.yaml:7: spec.rules[0].from[0]: source must not be empty (it would match every request)"),
    ("empty_from_list", "  rules:\n  - from: []\n",
     "p.yaml:6: spec.rules[0].from: from must not be empty"),
    ("when_without_values", "  rules:\n  - when:\n    - key: source.ip\n",
     "p.yaml:7: spec.rules[0].when[0]: when source.ip: at least one of values or notValues must be set"),
    ("when_bad_ip_notvalues", "  rules:\n  - when:\n    - key: source.ip\n      notValues: [10.0.0.300]\n",
     "p.yaml:8: spec.rules[0].when[0].notValues: when source.ip: '10.0.0.300' is not a CIDR or IP address"),
    ("when_bad_port", "  rules:\n  - when:\n    - key: destination.port\n      values: [\"70000\"]\n",
     "p.yaml:8: spec.rules[0].when[0].values: when destination.port: '70000' is not a port"),
    ("destination_namespace", "  rules:\n  - when:\n    - key: destination.namespace\n      values: [x]\n",
     "p.yaml:7: spec.rules[0].when[0].key: attribute destination.namespace is replaced by metadata.namespace"),
    ("destination_labels", "  rules:\n  - when:\n    - key: destination.labels[app]\n      values: [x]\n",
     "p.yaml:7: spec.rules[0].when[0].key: attribute destination.labels[app] is replaced by the workload selector"),
    ("deny_without_rules", "  action: DENY\n",
     "p.yaml:5: spec.action: a DENY policy without rules never matches; add a rule {} to deny every request"),
    ("deny_with_empty_rules", "  action: DENY\n  rules: []\n",
     "p.yaml:6: spec.rules: a DENY policy without rules never matches; add a rule {} to deny every request"),
    ("service_accounts_with_namespaces", "  rules:\n  - from:\n    - source:\n        namespaces: [a]\n"
     "        serviceAccounts: [a/b]\n",
     "p.yaml:9: spec.rules[0].from[0].source.serviceAccounts: serviceAccounts cannot be set together with "
     "namespaces or principals"),
    ("service_account_wildcard", "  rules:\n  - from:\n    - source:\n        serviceAccounts: [\"a/*\"]\n",
     "p.yaml:8: spec.rules[0].from[0].source.serviceAccounts: 'a/*': a wildcard is not allowed in a service account"),
    ("service_account_form", "  rules:\n  - from:\n    - source:\n        serviceAccounts: [a/b/c]\n",
     "p.yaml:8: spec.rules[0].from[0].source.serviceAccounts: 'a/b/c': expected 'serviceAccount' or "
     "'namespace/serviceAccount'"),
    ("empty_string_value", "  rules:\n  - from:\n    - source:\n        principals: [\"\"]\n",
     "p.yaml:8: spec.rules[0].from[0].source.principals: an empty string is not allowed as a value"),
    ("empty_string_when", "  rules:\n  - when:\n    - key: request.headers[x]\n      values: [\"\"]\n",
     "p.yaml:8: spec.rules[0].when[0].values: when request.headers[x]: an empty string is not allowed as a value"),
    ("bad_header_key", "  rules:\n  - when:\n    - key: request.headers[]\n      values: [x]\n",
     "p.yaml:7: spec.rules[0].when[0].key: bad key 'request.headers[]': should have the form request.headers[<name>]"),
    ("wildcard_selector", "  selector:\n    matchLabels: {app: \"*\"}\n  rules:\n  - {}\n",
     "p.yaml:6: spec.selector.matchLabels.app: a wildcard is not supported in a selector: app=*"),
    ("path_template_not_last", "  rules:\n  - to:\n    - operation:\n        paths: [\"/a/{**}/b/{*}\"]\n",
     "p.yaml:8: spec.rules[0].to[0].operation.paths[0]: '/a/{**}/b/{*}': {**} must be the last operator"),
    ("path_template_brace", "  rules:\n  - to:\n    - operation:\n        paths: [\"/a/{x}\"]\n",
     "p.yaml:8: spec.rules[0].to[0].operation.paths[0]: '/a/{x}': '{' or '}' beyond a supported path template "
     "({*} or {**})"),
]
PEER = [
    ("namespace_wide_port_level", "  mtls: {mode: STRICT}\n  portLevelMtls:\n    \"8080\": {mode: DISABLE}\n",
     "p.yaml:6: spec.portLevelMtls: a mesh- or namespace-wide PeerAuthentication cannot have portLevelMtls"),
    ("empty_port_level", "  selector: {matchLabels: {app: web}}\n  portLevelMtls: {}\n",
     "p.yaml:6: spec.portLevelMtls: portLevelMtls, if set, must have at least one port"),
    ("peer_wildcard_selector", "  selector: {matchLabels: {\"a*\": web}}\n  mtls: {mode: STRICT}\n",
     "p.yaml:5: spec.selector.matchLabels.a*: a wildcard is not supported in a selector: a*=web"),
]


@pytest.mark.parametrize("name, spec, message", CASES, ids=[c[0] for c in CASES])
def test_authorization_policy_refused_with_its_line(name, spec, message):
    assert refused(spec) == message


@pytest.mark.parametrize("name, spec, message", PEER, ids=[c[0] for c in PEER])
def test_peer_authentication_refused_with_its_line(name, spec, message):
    assert refused(spec, "PeerAuthentication") == message


@pytest.mark.parametrize("spec", [
    "  action: DENY\n  rules:\n  - {}\n",  # deny everything, as Istio suggests
    "  rules:\n  - from:\n    - source:\n        serviceAccounts: [web-sa, other/x]\n",
    "  rules:\n  - when:\n    - key: source.serviceAccount\n      values: [web-sa]\n",
    "  rules:\n  - to:\n    - operation:\n        paths: [\"/a/{*}/b/{**}\"]\n",
    "  selector: {matchLabels: {app: web}}\n  rules:\n  - {}\n",
])
def test_valid_documents_still_load(spec):
    assert len(load_documents(HEAD.format(kind="AuthorizationPolicy") + spec, "p.yaml")) == 1
