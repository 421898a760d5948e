"""`python -m agent.casvc.bench`: how many certificates the CA service signs per second
on one core — the whole decision (CSR parse, signature and SAN checks, node
authorization) plus the signature, in one thread pinned to one CPU; and the same over
gRPC on loopback (TLS, one client, calls in sequence). A measurement, not a test: it
prints figures and asserts nothing. CSRs are made beforehand (that is the node's work).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

from agent.casvc import decide
from agent.identity import ca, store

TD = "cluster.local"


def _setup(d: Path, n_ids: int) -> tuple[Path, list[str]]:
    store.init_dir(d, TD)
    store.issue_node_credential(d, "node-0")
    ids = [f"spiffe://{TD}/ns/bench/sa/sa-{i}" for i in range(n_ids)]
    cfg = d / "ca.yaml"
    cfg.write_text(json.dumps({"listen": "127.0.0.1:0", "signing": {"cert": str(d / "root.pem"), "key": str(d / "root.key")},
                               "server_names": ["127.0.0.1"], "audit_log": str(d / "audit.jsonl"),
                               "nodes": {"node-0": ids}}))
    return cfg, ids


def in_process(cfg: Path, ids: list[str], seconds: float) -> float:
    from agent.casvc.authority import load_authority

    a = load_authority(str(cfg), dt.datetime.now(dt.UTC))
    csrs = [ca.csr_pem(ca.make_csr(i)[0]).decode() for i in ids]
    caller = decide.Caller("node-0", "certificate")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        d = decide.authorize(decide.Request(csrs[n % len(csrs)], 3600, ids[n % len(ids)]), caller, a.view)
        a.sign(d, dt.datetime.now(dt.UTC))
        n += 1
    return n / (time.perf_counter() - t0)


def over_grpc(cfg: Path, ids: list[str], d: Path, seconds: float) -> float:
    from agent.casvc.server import CaService, build_server
    from agent.identity.caclient import CaClient, CaTarget

    svc = CaService(str(cfg))
    server, port = build_server(svc)
    server.start()
    cred = d / "nodes" / "node-0" / "credential"
    c = CaClient(CaTarget(f"127.0.0.1:{port}", (d / "root.pem").read_bytes(), (cred / "cert.pem").read_bytes(),
                          (cred / "key.pem").read_bytes()))
    c.fetch(ids[0], 3600)  # warm-up; each call opens its own TLS connection, as the agent's do
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        c.fetch(ids[n % len(ids)], 3600)  # includes making the key and CSR (the node's share)
        n += 1
    rate = n / (time.perf_counter() - t0)
    c.close()
    server.stop(0).wait()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cpu", type=int, default=0, help="the CPU to pin to")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    with tempfile.TemporaryDirectory(prefix="hostmesh-ca-bench-") as tmp:
        cfg, ids = _setup(Path(tmp), 64)
        out = {"cpus": 1, "signed_per_s_in_process": round(in_process(cfg, ids, args.seconds)),
               "issued_per_s_grpc_one_client": round(over_grpc(cfg, ids, Path(tmp), args.seconds))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
