"""The per-request decision both L7 paths share (agent/proxy/l7judge.py), on heads as the
core's hyper path reports them (field lines as raw name/value bytes, in order)."""

import pytest

from agent.proxy.l7judge import denial, judge_fields, needs_host, told_attrs
from agent.rbac.evaluate import Decision

H = [(b"host", b"web")]


def judge(method=b"GET", target=b"/a", version=b"1.1", headers=H):
    return judge_fields(method, target, version, headers)


@pytest.mark.parametrize("kw, why", [
    ({"method": b"get"}, "method not in upper case"),
    ({"headers": H + [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]},
     "both Transfer-Encoding and Content-Length (RFC 9112 6.3)"),
    ({"headers": H + [(b"content-length", b"5, 5")]}, "more than one Content-Length"),
    ({"headers": H + [(b"content-length", b"5"), (b"content-length", b"5")]}, "more than one Content-Length"),
    ({"headers": H + [(b"host", b"other")]}, "more than one Host"),
    ({"version": b"1.0", "headers": [(b"transfer-encoding", b"chunked")]}, "Transfer-Encoding in an HTTP/1.0 request"),
    ({"target": b"/%00"}, None),  # pathnorm's reason, checked below
])
def test_framing_and_targets_are_refused_with_their_reason(kw, why):
    j = judge(**kw)
    assert j.why is not None and j.target is None
    if why is not None:
        assert j.why == why


@pytest.mark.parametrize("target, path, forward, host", [
    (b"/public/../admin", "/admin", "/admin", "web"),
    (b"/%61dmin?q=1", "/admin", "/admin?q=1", "web"),
    (b"http://other:8080/a/./b", "/a/b", "/a/b", "other:8080"),
])
def test_an_allowed_head_is_judged_on_its_normalized_target(target, path, forward, host):
    j = judge(target=target)
    assert j.why is None
    assert (j.attrs.path, j.target.forward, j.attrs.host) == (path, forward, host)


def test_duplicate_headers_are_joined_as_istio_does():
    j = judge(headers=H + [(b"x-user", b"a"), (b"X-User", b"b")])
    assert j.attrs.headers["x-user"] == ["a, b"]


def test_the_workload_gets_one_host_only_when_needed():
    assert not needs_host(judge().target, H)
    assert needs_host(judge(target=b"http://web/a").target, H)
    assert needs_host(judge(version=b"1.0", headers=[]).target, [])


def test_the_denial_names_the_policy():
    assert denial(Decision("deny", policy="shop/no-admin")) == (b"RBAC: access denied by shop/no-admin\n",
                                                               "shop/no-admin")
    assert denial(Decision("deny")) == (b"RBAC: access denied by policy\n", None)


def test_a_told_head_is_recorded_with_its_normalized_path_and_host():
    a = told_attrs("GET", "/x/../admin?q", "web")
    assert (a.method, a.path, a.host) == ("GET", "/admin", "web")
    a = told_attrs("GET", "http://other:81/a", "web")
    assert (a.path, a.host) == ("/a", "other:81")
    assert told_attrs("GET", "/%zz", "web").method == "-"
