"""HTTP Upgrade on an L7 port served by the core (dataplane.l7: core, the default): a
pod on the other node asks a DENY-`/admin*` workload to switch protocols. The upstream
(a small Python server in the web pod) answers 101 and then echoes raw bytes; the
client must get the 101 and its bytes back byte-exact both ways, through both agents.
The same request to a denied path is answered 403 and the upstream never sees it (its
own log of request lines says so)."""

from pathlib import Path

import pytest

from tests.lab.conftest import PY, lab_up, ns_run, wait_for, wait_listen
from tests.lab.test_mesh import DENY_ADMIN_PATH as DENY_ADMIN

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0, http_ports: [8080]}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
"""
# logs each request line it reads; an Upgrade request is answered 101, then raw echo
UPSTREAM = """
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def serve(c):
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        d = c.recv(65536)
        if not d:
            return c.close()
        data += d
    head, rest = data.split(b"\\r\\n\\r\\n", 1)
    log.write(head.split(b"\\r\\n")[0].decode("latin-1") + "\\n")
    if b"\\r\\nupgrade:" not in head.lower():
        c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\nok\\n")
        return c.close()
    c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n")
    if rest:
        c.sendall(rest)
    while (d := c.recv(65536)):
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(64)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""
# sends the Upgrade head for argv[2]; on a 101, 300 KB of bytes in pieces, each echoed
CLIENT = """
import os, socket, sys
s = socket.create_connection((sys.argv[1], 8080), 5)
s.settimeout(10)
s.sendall(b"GET " + sys.argv[2].encode() + b" HTTP/1.1\\r\\nHost: web\\r\\nConnection: Upgrade\\r\\n"
          b"Upgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n")
data = b""
while b"\\r\\n\\r\\n" not in data:
    d = s.recv(65536)
    if not d:
        break
    data += d
head, rest = data.split(b"\\r\\n\\r\\n", 1) if b"\\r\\n\\r\\n" in data else (data, b"")
print(head.split(b"\\r\\n")[0].decode("latin-1"))
if not head.startswith(b"HTTP/1.1 101"):
    sys.exit(0)
sent = b""
for i in range(30):
    chunk = os.urandom(10000) + bytes(range(256))
    s.sendall(chunk)
    sent += chunk
    while len(rest) < len(sent):
        d = s.recv(65536)
        if not d:
            break
        rest += d
s.shutdown(socket.SHUT_WR)
while (d := s.recv(65536)):
    rest += d
print("echo", "exact" if rest == sent else f"differs {len(rest)} vs {len(sent)}")
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("lupgrade", topology=TOPOLOGY, tmp=tmp_path_factory.mktemp("lupgrade")) as lab:
        work = Path(f"/run/hostmesh/lab/{lab.name}/upstream")
        work.mkdir(parents=True, exist_ok=True)
        lab.upstream_log = work / "requests.log"
        lab.spawn(lab.pod("web")["netns"], PY, "-c", UPSTREAM, str(lab.upstream_log))
        wait_listen(lab.pod("web")["netns"], 8080)
        lab.apply(DENY_ADMIN)
        yield lab


def test_an_allowed_upgrade_gets_101_and_a_byte_exact_raw_echo(lab):
    client, web = lab.pod("client")["netns"], lab.pod("web")["ip"]
    r = ns_run(client, PY, "-c", CLIENT, web, "/ws", timeout=60)
    assert r.stdout.splitlines() == ["HTTP/1.1 101 Switching Protocols", "echo exact"], (r.stdout, r.stderr)
    assert "GET /ws HTTP/1.1" in lab.upstream_log.read_text()
    # switched by the core at both ends (the destination serves it; the source's view
    # watches it switch, l7tap.rs)
    wait_for(lambda: all(lab.stats(n).get("native_l7_upgrades", 0) >= 1 for n in (0, 1)))
    # the connection after the upgrade is an ordinary one: no reset counted
    assert all(lab.stats(n).get("connection_errors", 0) == 0 for n in (0, 1))


def test_a_denied_upgrade_is_403_and_never_reaches_the_workload(lab):
    client, web = lab.pod("client")["netns"], lab.pod("web")["ip"]
    r = ns_run(client, PY, "-c", CLIENT, web, "/admin/ws", timeout=30)
    assert r.stdout.splitlines() == ["HTTP/1.1 403 Forbidden"], (r.stdout, r.stderr)
    assert "admin" not in lab.upstream_log.read_text()
    # an ordinary request still works on the same port afterwards
    ok = ns_run(client, "curl", "-s", "-m", "5", f"http://{web}:8080/ok")
    assert ok.stdout == "ok\n", (ok.stdout, ok.stderr)
