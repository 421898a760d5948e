"""A mesh in the middle of a rollout: node-0 plays an agent from before HBONE (its
capture lets a pod's :15008 through to the pod, as the old template's
`tcp dport 15008 return` did, and it tunnels with HTTP/1.1 CONNECT); node-1 is current
(HBONE by default). Node-1's first connection to a node-0 pod gets no HBONE answer from
the pod's :15008 (nothing listens there: a reset), falls back to CONNECT on node-0's
address and succeeds; later connections go to CONNECT directly (one fallback counted),
and node-0's own connections to node-1 (CONNECT) are served by node-1's node address."""

from pathlib import Path

import pytest
import yaml

from tests.lab.conftest import hm, lab_up, ns_run
from tests.lab.test_hbone_iptables import TOPOLOGY  # web on node-0, client on node-1

# the capture rule of an agent from before HBONE, put first in node-0's pod_in chain
OLD_RULE = ["nft", "insert", "rule", "inet", "hostmesh", "pod_in", "tcp", "dport", "15008", "return"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("khbmix", topology=TOPOLOGY, tmp=tmp_path_factory.mktemp("khbmix")) as lab:
        path = Path(f"/run/hostmesh/lab/{lab.name}/node-0/config.yaml")
        cfg = yaml.safe_load(path.read_text())
        cfg.setdefault("dataplane", {})["tunnel_protocol"] = "connect"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        hm("lab", "agent", "--name", lab.name, "node-0", "stop", check=True)
        hm("lab", "agent", "--name", lab.name, "node-0", "start", check=True)
        r = ns_run(lab.node(0)["netns"], *OLD_RULE)
        assert r.returncode == 0, r.stderr
        lab.serve_http("web", 8080)
        lab.serve_http("client", 8080)
        yield lab


def curl(lab, frm: str, to: str) -> str:
    return ns_run(lab.pod(frm)["netns"], "curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                  f"http://{lab.pod(to)['ip']}:8080/").stdout


def test_hbone_falls_back_to_connect_toward_a_node_without_hbone(lab):
    assert [curl(lab, "client", "web") for _ in range(3)] == ["200"] * 3
    stats = lab.stats(1)
    assert stats.get("tunnel_hbone_fallback") == 1, stats
    assert lab.admin(1, "GET", "/v1/stats")[1]["engine"].get("hbone_streams_opened", 0) == 0
    # the other way: node-0's CONNECT reaches node-1's node address
    assert curl(lab, "web", "client") == "200"
    assert lab.admin(0, "GET", "/v1/stats")[1]["engine"].get("hbone_connections_opened", 0) == 0
