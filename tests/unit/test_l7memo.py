"""The core reuses an allowed L7 answer for later heads of a connection with the same
key (dataplane/src/l7memo.rs); the key must hold everything of a head Python's decision
reads. The table of heads is shared with the Rust tests (l7memo_cases.txt): heads of one
group have one key, in Rust and here, and get one answer from Python's decision; a
property test varies everything the key leaves out."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.proxy.l7judge import judge_fields, memo_key, needs_host
from agent.rbac.evaluate import evaluate
from tests.unit.test_rbac_evaluate import conn, pol, store

CASES = Path(__file__).parents[2] / "dataplane" / "src" / "l7memo_cases.txt"


def cases():
    out = []
    for line in CASES.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        fields = [tuple(f.split(": ", 1)) for f in (cols[4] if len(cols) > 4 else "").split(" | ") if f]
        out.append((cols[0], cols[1].encode(), cols[2].encode(), cols[3].encode(),
                    [(n.encode(), v.encode()) for n, v in fields]))
    return out


# L7 rules of every kind the key must carry (no request.headers: such a set never memoizes)
POLICIES = (
    pol("no-admin", "shop", "action: DENY\nrules:\n- to: [{operation: {paths: ['/admin*']}}]"),
    pol("reads", "shop", "rules:\n- to: [{operation: {methods: ['GET', 'HEAD', 'POST'], hosts: ['web', 'web:*'],"
                         " notPaths: ['/private*']}}]"),
)


def answer(s, method, target, version, headers):
    """Everything Python answers a head and records of it."""
    j = judge_fields(method, target, version, headers)
    if j.why:
        return ("bad", j.why)
    d = evaluate(s, conn(), j.attrs)
    return (d.verdict, d.policy, j.target.forward, needs_host(j.target, headers), j.attrs.method, j.attrs.path,
            j.attrs.host)


def test_heads_of_one_group_have_one_key_and_one_answer():
    s = store(*POLICIES)
    seen = []
    for group, *head in cases():
        key, ans = memo_key(*head), answer(s, *head)
        for g, k, a in seen:
            assert (g == group) == (k == key), (group, g)
            if g == group:
                assert a == ans, group
        seen.append((group, key, ans))
    assert {g for g, _, _ in seen} >= {"get", "admin", "tecl", "lower"}


OTHER = st.sampled_from([b"user-agent", b"accept", b"cookie", b"x-user", b"content-type", b"expect"])
VALUE = st.binary(min_size=0, max_size=6).map(lambda b: bytes(c % 94 + 33 for c in b))
PATH = st.lists(st.sampled_from(["a", "admin", "..", ".", "%61dmin", "private", "x", ""]), max_size=4)


@given(method=st.sampled_from([b"GET", b"POST", b"get", b"HEAD", b"DELETE"]),
       path=PATH, version=st.sampled_from([b"1.0", b"1.1"]),
       hosts=st.lists(st.sampled_from([b"web", b"Web", b"web:8080", b"other"]), max_size=2),
       framing=st.sampled_from([(), ((b"content-length", b"5"),), ((b"transfer-encoding", b"chunked"),),
                                ((b"content-length", b"1, 1"),)]),
       a=st.lists(st.tuples(OTHER, VALUE), max_size=4), b=st.lists(st.tuples(OTHER, VALUE), max_size=4),
       cl=st.integers(0, 10**6))
def test_what_the_key_leaves_out_never_changes_the_answer(method, path, version, hosts, framing, a, b, cl):
    s = store(*POLICIES)
    target = ("/" + "/".join(path)).encode()
    base = [(b"host", h) for h in hosts]

    def head(extra, n):
        fr = [(k, str(n).encode()) if v == b"5" else (k, v) for k, v in framing]
        return (method, target, version, base[:1] + extra + fr + base[1:])

    h1, h2 = head(a, 5), head(b, cl)
    assert memo_key(*h1) == memo_key(*h2)
    assert answer(s, *h1) == answer(s, *h2)


def test_a_policy_reading_a_header_is_never_memoized():
    import time

    from agent.proxy.conns import Conn
    from agent.proxy.enforce import reusable
    from agent.rbac.evaluate import Decision
    from agent.state.workloads import workload_from_json

    class Agent:
        def __init__(self, s):
            self.policies = s

    web = workload_from_json({"uid": "u1", "name": "web", "namespace": "shop", "ip": "10.1.0.5",
                              "labels": {"app": "web"}, "http_ports": [8080]})

    def c(dst=web):
        return Conn("inbound", "tunnel", "10.1.0.9", 40000, "10.1.0.5", 8080, time.time(), time.monotonic(), dst=dst)

    hdr = pol("hdr", "shop", "rules:\n- when: [{key: 'request.headers[x-user]', values: ['a']}]")
    mesh_hdr = pol("hdr", "istio-system", "rules:\n- when: [{key: 'request.headers[x-user]', values: ['a']}]")
    ok = Decision("allow", "shop/reads")
    assert reusable(Agent(store(*POLICIES)), c(), ok)
    assert not reusable(Agent(store(*POLICIES, hdr)), c(), ok)
    assert not reusable(Agent(store(mesh_hdr)), c(None), ok)  # no workload: mesh-wide policies still apply
    assert not reusable(Agent(store(*POLICIES)), c(), Decision("deny", "shop/no-admin"))
    assert not reusable(Agent(store(*POLICIES)), c(), Decision("allow", audit=True))
    assert not reusable(Agent(store(*POLICIES)), c(), Decision("allow", dry_run_matches=("shop/x",)))


@pytest.mark.parametrize("raw, fields", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", [(b"host", b"a"), (b"host", b"b")]),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
     [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]),
    (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", [(b"content-length", b"5, 5")]),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [(b"host", b"a")]),
])
def test_the_raw_head_and_its_field_lines_are_judged_alike(raw, fields):
    from agent.proxy.h1rules import check_fields, check_head

    assert check_head(raw, raw.split(b" ")[0], b"1.1") == check_fields(raw.split(b" ")[0], b"1.1", fields)
