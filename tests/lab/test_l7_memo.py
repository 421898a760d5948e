"""Reused answers on an L7 port (docs/dataplane.md "Reused answers"): on one keep-alive
connection from a pod on the other node, the same allowed head three times is asked
once and carried out by the core twice, each still counted and recorded; a policy
applied while the connection stays open denies the very next such head (403 naming
the new policy): no answer of the old policies is reused after the swap."""

import subprocess

import pytest

from tests.lab.conftest import PY, lab_up, wait_for
from tests.lab.test_mesh import DENY_ADMIN_PATH as DENY_ADMIN

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0, http_ports: [8080]}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
"""
DENY_A = DENY_ADMIN.replace("no-admin", "no-a").replace('"/admin*"', '"/a"')
# one keep-alive connection: GET /a (different User-Agents: not in the key) three times,
# then waits for a line on stdin and sends GET /a once more; prints each status line
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), 5)
s.settimeout(10)
f = s.makefile("rb")
def get(ua):
    s.sendall(b"GET /a HTTP/1.1\\r\\nHost: web\\r\\nUser-Agent: " + ua + b"\\r\\n\\r\\n")
    status = f.readline().decode().strip()
    n = 0
    while (line := f.readline()) not in (b"\\r\\n", b""):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
        if line.lower().startswith(b"x-hostmesh-policy:"):
            status += " " + line.split(b":")[1].strip().decode()
    f.read(n)
    print(status, flush=True)
for ua in (b"one", b"two", b"three"):
    get(ua)
sys.stdin.readline()
get(b"four")
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("hmemo", topology=TOPOLOGY, tmp=tmp_path_factory.mktemp("hmemo")) as lab:
        lab.serve_http("web")
        lab.apply(DENY_ADMIN)
        yield lab


def test_an_allowed_head_is_reused_until_a_policy_change_denies_it(lab):
    web = lab.pod("web")["ip"]
    before = lab.stats(0)
    p = subprocess.Popen(["ip", "netns", "exec", lab.pod("client")["netns"], PY, "-c", CLIENT, web],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = [p.stdout.readline().strip() for _ in range(3)]
        assert got == ["HTTP/1.1 200 OK"] * 3, (got, p.stderr.read() if p.poll() is not None else "")

        def moved(name, n):
            return lab.stats(0).get(name, 0) - before.get(name, 0) == n
        # asked once, carried out by the core twice; each counted as a decision
        wait_for(lambda: moved("native_l7_memo_hits", 2) and moved("http_requests_allow", 3))
        lab.apply(DENY_A)  # the connection stays open (its heads are judged one by one)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "HTTP/1.1 403 Forbidden shop/no-a"
        assert p.wait(10) == 0, p.stderr.read()
        assert moved("native_l7_memo_hits", 2) and moved("http_requests_deny", 1)
    finally:
        p.kill()
