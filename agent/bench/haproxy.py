"""HAProxy at both ends doing the same mTLS hop as hostmesh (NOTES.md's configuration):
node-1 takes the client pod's traffic on a transparent :15001 (the same capture rules
hostmesh uses), picks a TLS backend by the original destination port, and node-0
terminates TLS on its underlay address and connects to the server pod.

The ports in ``l7_ports`` (http-l7-1000rps) are terminated in ``mode http`` at node-0 with
``http-request deny`` for the denied path prefix: the equivalent of hostmesh's L7 rule,
enforced where hostmesh enforces it (the destination's node; the source side stays TCP:
hostmesh's source agent only watches the heads for its metrics and judges none). ``client_config`` and
``server_config`` are pure.

``tls=False`` (path ``haproxy-plain``) is the same topology with the ``ssl ...`` parts of
the inter-node hop removed: the same capture rules, namespaces, veths, ports and backends,
plain TCP between the nodes. It is the bench's floor for bulk, the ceiling of this two-hop
topology on this machine for any relay that copies bytes through user space and does no
crypto; never a configuration to run a mesh with. It never turns on splicing (``option
splice-*``): a splicing relay skips the user-space copy a TLS relay cannot skip, so it
would not be a floor for TLS."""

from __future__ import annotations

from pathlib import Path

from agent.bench.lab import Lab, hm

# Per destination port, the port node-0's HAProxy listens on for the inter-node hop
# (TLS, or plain TCP with tls=False).
TLS_PORT_BASE = 25000


def client_config(ports: list[int], node0: str, certs: Path | None, tls: bool = True) -> str:
    lines = [
        "global", "  maxconn 9000", "  nbthread 1",
        "defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 1h", "  timeout server 1h",
        "frontend out", "  bind 127.0.0.1:15001 transparent",
    ]
    for p in ports:
        lines.append(f"  use_backend b{p} if {{ dst_port {p} }}")
    ssl = f" ssl verify required ca-file {certs}/bundle.pem crt {certs}/client.pem ssl-min-ver TLSv1.3" if tls else ""
    for p in ports:
        lines += [f"backend b{p}", f"  server n0 {node0}:{TLS_PORT_BASE + p % 1000}{ssl}"]
    return "\n".join(lines) + "\n"


def server_config(ports: list[int], node0: str, pod: str, certs: Path | None, l7_ports: dict[int, str] | None = None,
                  tls: bool = True) -> str:
    """``l7_ports``: port -> the path prefix its ``mode http`` frontend denies."""
    ssl = f" ssl crt {certs}/server.pem ca-file {certs}/bundle.pem verify required ssl-min-ver TLSv1.3" if tls else ""
    lines = [
        "global", "  maxconn 9000", "  nbthread 1",
        "defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 1h", "  timeout server 1h",
        "  timeout http-keep-alive 1h",
    ]
    for p in ports:
        deny = (l7_ports or {}).get(p)
        lines += [f"frontend f{p}"] + (["  mode http"] if deny else []) + [
                  f"  bind {node0}:{TLS_PORT_BASE + p % 1000}{ssl}"]
        if deny:
            lines.append(f"  http-request deny if {{ path_beg {deny} }}")
        lines += [f"  default_backend b{p}", f"backend b{p}"] + (["  mode http"] if deny else []) + [
                  f"  server pod {pod}:{p}"]
    return "\n".join(lines) + "\n"


def make_certs(work: Path) -> Path:
    """A root, a node intermediate and two SVIDs (client, server) as HAProxy wants them:
    each ``crt`` file holds the leaf, the intermediate and the key."""
    from agent.identity import ca
    from agent.identity.testing import make_pki

    d = work / "haproxy-certs"
    d.mkdir(parents=True, exist_ok=True)
    pki = make_pki("cluster.local")
    (d / "bundle.pem").write_bytes(ca.cert_pem(pki.root))
    for name, sid in (("client", "spiffe://cluster.local/ns/bench/sa/cli"), ("server", "spiffe://cluster.local/ns/bench/sa/srv")):
        chain, key = pki.svid(sid)
        (d / f"{name}.pem").write_bytes(chain + key)
    return d


class HAProxyPath:
    """Both HAProxies up (and node-1's capture installed) for the ``with`` block; ``tls=False``:
    the plain-TCP floor, its files named ``hap-plain-*`` beside the TLS path's."""

    def __init__(self, lab: Lab, work: Path, ports: list[int], l7_ports: dict[int, str] | None = None,
                 tls: bool = True) -> None:
        self.lab, self.work, self.ports, self.l7_ports, self.tls = lab, work, ports, l7_ports, tls
        self.pids: list[int] = []

    def __enter__(self) -> HAProxyPath:
        certs = make_certs(self.work) if self.tls else None
        n0, n1 = self.lab.node(0), self.lab.node(1)
        cli = self.lab.pod("cli")
        srv = self.lab.pod("srv")
        name = "hap" if self.tls else "hap-plain"
        (self.work / f"{name}-client.cfg").write_text(client_config(self.ports, n0["address"], certs, self.tls))
        (self.work / f"{name}-server.cfg").write_text(server_config(self.ports, n0["address"], srv["ip"], certs,
                                                                    self.l7_ports, self.tls))
        hm("capture", "install", "--netns", n1["netns"], "--pod", cli["ip"])
        a = self.lab.spawn(n0["netns"], "haproxy", "-db", "-f", str(self.work / f"{name}-server.cfg"),
                           log=self.work / f"{name}-server.log")
        b = self.lab.spawn(n1["netns"], "haproxy", "-db", "-f", str(self.work / f"{name}-client.cfg"),
                           log=self.work / f"{name}-client.log")
        self.pids = [a.pid, b.pid]
        from agent.bench.lab import wait_port

        wait_port(self.lab, n1["netns"], "127.0.0.1", 15001)
        return self

    def __exit__(self, *exc) -> None:
        n1 = self.lab.node(1)
        hm("capture", "remove", "--netns", n1["netns"], check=False)
        for p in self.lab.procs[-2:]:
            p.kill()
            p.wait()
        del self.lab.procs[-2:]
