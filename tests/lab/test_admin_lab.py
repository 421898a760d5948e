"""The admin API against a real agent: 500 workloads registered and removed leave the
registry, the capture sets and the certificate table as they started (issue 8)."""

import json

from tests.lab.conftest import hm, lab_up, ns_run


def nft_sets(netns: str) -> set[str]:
    out = ns_run(netns, "nft", "-j", "list", "table", "inet", "hostmesh").stdout
    members = set()
    for item in json.loads(out)["nftables"]:
        s = item.get("set")
        if s and s["name"] in ("pods4", "pods6"):
            members |= {str(e) for e in s.get("elem", [])}
    return members


def test_500_workloads_registered_then_removed_leave_no_trace():
    # node intermediates: made-up identities get SVIDs at once (the lab CA service would refuse
    # them: they have no workload in its view)
    with lab_up("tadm", "--nodes", "1", "--pods-per-node", "1", "--node-ca") as lab:
        node = lab.node(0)
        ns = node["netns"]
        before = (lab.admin(0, "GET", "/v1/workloads")[1], nft_sets(ns), lab.admin(0, "GET", "/v1/certs")[1])
        for i in range(500):
            code, body = lab.admin(0, "POST", "/v1/workloads", {
                "uid": f"w{i}", "name": f"w{i}", "namespace": f"ns{i % 10}", "service_account": f"sa{i % 25}",
                "ip": f"198.19.{1 + i // 250}.{i % 250 + 2}", "labels": {"app": f"a{i}"}})
            assert code == 201, body
        mid_sets = nft_sets(ns)
        assert len(mid_sets - before[1]) == 500
        certs = lab.admin(0, "GET", "/v1/certs")[1]
        identities = {(f"ns{i % 10}", f"sa{i % 25}") for i in range(500)}
        assert len(certs) == len(before[2]) + len(identities)  # one SVID per identity, not per pod
        assert all(c["state"] == "available" for c in certs)
        r = hm("capture", "status", "--netns", ns, "--config",
               str(__import__("pathlib").Path(node["admin_socket"]).parent / "config.yaml"))
        assert "extra" in r.stdout  # the enrolled API workloads are not in the static config: status says so
        for i in range(500):
            assert lab.admin(0, "DELETE", f"/v1/workloads/w{i}")[0] == 200
        after = (lab.admin(0, "GET", "/v1/workloads")[1], nft_sets(ns), lab.admin(0, "GET", "/v1/certs")[1])
        assert after[0] == before[0] and after[1] == before[1]
        assert [c["identity"] for c in after[2]] == [c["identity"] for c in before[2]]
        # invalid bodies change nothing
        assert lab.admin(0, "POST", "/v1/workloads", {"uid": "x", "name": "x", "ip": "not-an-ip"})[0] == 400
        assert nft_sets(ns) == before[1]
