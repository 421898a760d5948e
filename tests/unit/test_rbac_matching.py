"""Issue 15 item 5: matching details as Istio's reference defines them, one row each."""

import pytest

from agent.proxy.l7 import request_attrs
from agent.rbac.evaluate import evaluate, mtls_mode
from agent.rbac.pathnorm import normalize_target
from tests.unit.test_rbac_evaluate import conn, http, pol, store


@pytest.mark.parametrize("accounts, principal, matches", [
    ('["web-sa"]', "cluster.local/ns/shop/sa/web-sa", True),  # no namespace: the policy's own (shop)
    ('["web-sa"]', "cluster.local/ns/front/sa/web-sa", False),
    ('["front/client"]', "cluster.local/ns/front/sa/client", True),
    ('["front/client"]', None, False),  # plaintext: no identity, no service account
])
def test_service_accounts_without_namespace_mean_the_policys(accounts, principal, matches):
    s = store(pol("a", "shop", f"rules:\n- from:\n  - source: {{serviceAccounts: {accounts}}}"))
    assert evaluate(s, conn(principal=principal), None).verdict == ("allow" if matches else "deny")


def test_source_service_account_condition():
    s = store(pol("a", "shop", "rules:\n- when:\n  - {key: source.serviceAccount, values: [web-sa]}"))
    assert evaluate(s, conn(principal="cluster.local/ns/shop/sa/web-sa")).verdict == "allow"
    assert evaluate(s, conn(principal="cluster.local/ns/x/sa/web-sa")).verdict == "deny"


def _h11_request(headers):
    import h11

    ev = h11.Request(method="GET", target="/", headers=[("host", "w"), *headers])
    return request_attrs(ev, normalize_target("GET", "/"), "")


@pytest.mark.parametrize("headers, matches", [
    ([("x-user", "alice")], True),
    # Istio joins duplicates with ", ": a second header cannot satisfy what the first fails
    ([("x-user", "mallory"), ("x-user", "alice")], False),
    ([("x-user", "alice"), ("x-user", "alice")], False),
])
def test_duplicate_headers_are_joined_before_matching(headers, matches):
    s = store(pol("a", "shop", 'rules:\n- when:\n  - {key: "request.headers[x-user]", values: ["alice"]}'))
    r = _h11_request(headers)
    assert evaluate(s, conn(), r).verdict == ("allow" if matches else "deny")


def test_joined_headers_value():
    assert _h11_request([("x-a", "1"), ("X-A", "2")]).headers["x-a"] == ["1, 2"]


@pytest.mark.parametrize("host, pattern, matches", [
    ("web.shop", "web.shop", True),
    ("web.shop:8080", "web.shop", False),
    ("web.shop:8080", "web.shop:8080", True),
    ("WEB.Shop", "web.shop", True),
    ("web.shop:8080", "web.shop*", True),
])
def test_hosts_exact_without_port(host, pattern, matches):
    s = store(pol("a", "shop", f'rules:\n- to:\n  - operation: {{hosts: ["{pattern}"]}}'))
    assert evaluate(s, conn(), http(host=host)).verdict == ("allow" if matches else "deny")


@pytest.mark.parametrize("pattern, path, matches", [
    ("/foo/{*}", "/foo/bar", True),
    ("/foo/{*}", "/foo/bar/baz", False),
    ("/foo/{*}", "/foo/", False),  # {*} is one non-empty segment
    ("/foo/{**}", "/foo/bar/baz", True),
    ("/foo/{**}", "/foo/", True),
    ("/foo/{**}", "/foobar", False),
    ("/{*}/admin/{**}", "/v1/admin/x/y", True),
    ("/{*}/admin/{**}", "/v1/v2/admin/x", False),
    ("/{**}", "/", True),
    ("/{**}", "/a/b", True),
    ("/foo/{*}", "/foo/a?b", False),  # only pchars: '?' cannot be part of a segment
])
def test_path_templates(pattern, path, matches):
    s = store(pol("a", "shop", f'rules:\n- to:\n  - operation: {{paths: ["{pattern}"]}}'))
    assert evaluate(s, conn(), http(path=path)).verdict == ("allow" if matches else "deny")


def _pa(name, ns, spec):
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec: {spec}\n")


@pytest.mark.parametrize("docs, port, mode", [
    ([], 80, "PERMISSIVE"),
    ([_pa("root", "istio-system", "{mtls: {mode: STRICT}}")], 80, "STRICT"),
    # UNSET inherits: workload -> namespace -> root
    ([_pa("root", "istio-system", "{mtls: {mode: STRICT}}"),
      _pa("ns", "shop", "{mtls: {mode: UNSET}}")], 80, "STRICT"),
    ([_pa("root", "istio-system", "{mtls: {mode: STRICT}}"),
      _pa("w", "shop", "{selector: {matchLabels: {app: web}}, mtls: {mode: UNSET}}")], 80, "STRICT"),
    ([_pa("ns", "shop", "{mtls: {mode: PERMISSIVE}}"), _pa("root", "istio-system", "{mtls: {mode: STRICT}}"),
      _pa("w", "shop", "{selector: {matchLabels: {app: web}}}")], 80, "PERMISSIVE"),
    ([_pa("ns", "shop", "{mtls: {mode: STRICT}}"),
      _pa("w", "shop", "{selector: {matchLabels: {app: web}}, portLevelMtls: {'80': {mode: DISABLE}}}")], 80,
     "PERMISSIVE"),
    # a port-level UNSET falls back to the policy's mode, then up the levels
    ([_pa("ns", "shop", "{mtls: {mode: STRICT}}"),
      _pa("w", "shop", "{selector: {matchLabels: {app: web}}, portLevelMtls: {'80': {mode: UNSET}}}")], 80,
     "STRICT"),
    ([_pa("ns", "shop", "{mtls: {mode: DISABLE}}")], 80, "PERMISSIVE"),
])
def test_peer_authentication_unset_inherits(docs, port, mode):
    assert mtls_mode(store(*docs), "shop", {"app": "web"}, port) == mode


HTTP_ONLY = 'rules:\n- to:\n  - operation: {paths: ["/admin*"]}'


@pytest.mark.parametrize("action, spec, verdict", [
    ("DENY", HTTP_ONLY, "deny"),  # TCP port: a DENY with HTTP-only fields denies (fail closed)
    ("DENY", 'rules:\n- when:\n  - {key: "request.headers[x]", values: ["1"]}', "deny"),
    ("DENY", 'rules:\n- to:\n  - operation: {ports: ["9999"], methods: [GET]}', "allow"),  # its TCP part decides
    ("ALLOW", HTTP_ONLY, "deny"),  # an ALLOW with HTTP-only fields never matches at L4
])
def test_http_only_fields_on_a_tcp_port(action, spec, verdict):
    s = store(pol("a", "shop", f"action: {action}\n{spec}"))
    assert evaluate(s, conn(dst_port=5432), None).verdict == verdict


def test_deny_with_http_fields_still_judges_each_request_on_http_ports():
    s = store(pol("a", "shop", f"action: DENY\n{HTTP_ONLY}"))
    assert evaluate(s, conn(), http(path="/ok")).verdict == "allow"
    assert evaluate(s, conn(), http(path="/admin/x")).verdict == "deny"


