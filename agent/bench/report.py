"""Presenting a benchmark run: a table for people, the JSON document (SPEC.md shape),
PNG plots, and the Markdown report in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

from agent.bench.runner import PATHS

# the paths a run measures, then hostmesh-python: the Python data plane's figures, kept
# in a merged document from the run before it was removed
PATH_ORDER = [*PATHS, "hostmesh-python"]


def table(doc: dict) -> str:
    rows = doc["results"]
    keys = sorted({(r["scenario"], r["metric"]) for r in rows})
    paths = [p for p in PATH_ORDER if any(r["path"] == p for r in rows)]
    head = ["scenario", "metric", *paths]
    lines = [head]
    for s, m in keys:
        vals = {r["path"]: r["value"] for r in rows if (r["scenario"], r["metric"]) == (s, m)}
        lines.append([s, m, *[f"{vals[p]:g}" if p in vals else "-" for p in paths]])
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    out.append("targets:")
    for t in doc["targets"]:
        mark = "MET " if t["met"] else "MISS"
        val = "-" if t["value"] is None else f"{t['value']:g}"
        out.append(f"  [{mark}] {t['name']}: {val} (goal {t['goal']}){' — ' + t['note'] if t.get('note') else ''}")
    for e in doc.get("errors", []):
        out.append(f"  [ERR ] {e['step']}: {e['error'][:160]}")
    return "\n".join(out)


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def plots(doc: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []
    charts = [("bulk-1", "gbit_s", "iperf3, 1 stream (Gbit/s, higher is better)"),
              ("bulk-4", "gbit_s", "iperf3, 4 streams (Gbit/s, higher is better)"),
              ("pingpong", "p50_us", "sockperf ping-pong p50 (us, lower is better)"),
              ("pingpong", "p99_us", "sockperf ping-pong p99 (us, lower is better)"),
              ("http-1000rps", "p90_ms", "HTTP at 1,000 rps, p90 (ms, lower is better)"),
              ("http-l7-1000rps", "p90_ms", "HTTP at 1,000 rps with an L7 path rule, p90 (ms, lower is better)"),
              ("idle-10k", "kib_per_conn", "memory per idle connection per proxy (KiB, lower is better)"),
              ("connect-rate", "conn_per_s", "new connection per request (conn/s, higher is better)")]
    for scenario, metric, title in charts:
        vals = [(r["path"], r["value"]) for r in doc["results"] if (r["scenario"], r["metric"]) == (scenario, metric)]
        if not vals:
            continue
        vals.sort(key=lambda pv: PATH_ORDER.index(pv[0]) if pv[0] in PATH_ORDER else 99)
        fig, ax = plt.subplots(figsize=(7, 3.2))
        colors = [{"direct": "#888888", "haproxy": "#d98b2b", "haproxy-plain": "#f0c27b",
                   "ztunnel": "#3c9a5f"}.get(p, "#2b6cd9") for p, _ in vals]
        ax.barh([p for p, _ in vals], [v for _, v in vals], color=colors)
        for i, (_, v) in enumerate(vals):
            ax.text(v, i, f" {v:g}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        f = out / f"bench-{scenario}-{metric}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        made.append(f)
    return made


PATH_NOTES = [
    ("direct", "no proxy, no capture (the baseline every added latency is measured from)"),
    ("haproxy", "HAProxy 2.6 at both ends, mutual TLS 1.3 between the nodes, one thread each; the L7 port in "
                "`mode http` at node-0 with `http-request deny if { path_beg /admin }`"),
    ("haproxy-plain", "the same two HAProxies, capture rules, namespaces and ports with the `ssl` parts of the "
                      "inter-node hop removed (plain TCP, no splicing; bulk and ping-pong only): what any relay "
                      "that copies the bytes through user space carries on this topology without crypto"),
    ("ztunnel", "only with `--ztunnel BIN`: a user-supplied ztunnel at both ends (dedicated mode, one in each "
                "pod's namespace, HBONE)"),
    ("hostmesh", "the agents as installed: the native core (the Rust core moves the bytes and terminates TLS; "
                 "Python decides) and the default tunnel, HBONE"),
    ("hostmesh-same-node", "client and server pods on node-0: one agent, no tunnel TLS"),
    ("hostmesh-connect", "native with `dataplane.tunnel_protocol: connect`: HTTP/1.1 CONNECT, one TLS connection "
                         "(and handshake) per tunnelled connection, beside HBONE"),
    ("hostmesh-python", "`dataplane.engine: epoll`, the Python data plane, recorded once before it was removed "
                        "(the run before, merged in; its tunnel is HTTP/1.1 CONNECT)"),
    ("hostmesh-telemetry-off", "native with the access log and HTTP metrics off (HTTP scenarios only)"),
    ("hostmesh-2-threads", "native with `dataplane.threads: 2` (bulk only): the core's threads replace worker "
                           "processes"),
    ("hostmesh-decide-all", "`dataplane.repeat_decisions: false` (connect-rate only): Python decides every "
                            "connection, no answers for repeat flows in the core (decisions/0006)"),
    ("hostmesh-connect-decide-all", "the same with HTTP/1.1 CONNECT (connect-rate only)"),
]
DROPPED = ("Dropped with the Python data plane: `hostmesh-one-shot` (reusable streams off; the native core "
           "has no hostmesh-streams/1, and `hostmesh-connect` is its one-handshake-per-connection path), "
           "`hostmesh-trio-relay` (a plain Python relay beside a Rust core measures nothing the product does) "
           "and `hostmesh-2-workers` (the native core runs in one process and refuses `dataplane.workers`; "
           "`hostmesh-2-threads` asks the same question of its threads). `hostmesh-native` became `hostmesh`.")
SCENARIO_NOTES = [
    ("bulk-1, bulk-4", "iperf3, 1 and 4 streams, 8 s"),
    ("pingpong", "sockperf ping-pong, 8 s: latency of one small message and its answer; like both http "
                 "scenarios, run three times on each path (once with `--quick`) and reported as each "
                 "figure's median, so one stall of the shared cores does not decide a ratio"),
    ("http-1000rps", "hey at 1,000 requests/s over 16 keep-alive connections to nginx (1 KiB answers), 10 s, on a "
                     "port not declared HTTP (L4: an HTTP rule on a workload has every declared HTTP port of it "
                     "inspected, so only the L7 port is declared); `cpu_per_1k_req` is CPU seconds per 1,000 "
                     "requests per proxy process, i.e. cores per 1,000 rps per agent"),
    ("http-l7-1000rps", "the same load on a port with an L7 path rule (an AuthorizationPolicy DENY of `/admin*` on "
                        "that port, which the load's `/1k` passes; applied on every hostmesh path), beside HAProxy in "
                        "`mode http` with the equivalent `http-request deny`; before the load a `/admin/x` request "
                        "must be refused with 403 on the path, so the rule is proven in force"),
    ("connect-rate", "hey with a new connection per request, 16 at a time, 6 s"),
    ("idle-10k", "idle connections held through the path (8,000: two descriptors per connection per agent and "
                 "this machine caps a process at 20,000); memory per connection per agent, the idle agent, and "
                 "the TLS connections node-1 holds to carry them (`ss`, peer port 15008; the core's "
                 "`hbone_connections` beside it when it counts them)"),
    ("policy-10k, discovery", "the policy engine and Kubernetes discovery micro-benchmarks (no data path)"),
]


def drift(doc: dict) -> list[str]:
    """The reference paths measured before and after the agents' phase (runner phase 3):
    each pair and how far the machine moved between them; the results above use their
    means (scenarios.bracket)."""
    pairs = doc.get("brackets") or []
    if not pairs:
        return []
    lines = ["## Drift between the phases", "",
             "`direct`, `haproxy` and `haproxy-plain` ran before the agents (phase 1) and again after them "
             "(phase 3); each figure above is the mean of the two, what the reference would have measured "
             "while the agents ran if the machine drifted evenly. The pairs:", "",
             "| scenario | path | metric | before | after | after / before |", "| --- | --- | --- | --- | --- | --- |"]
    for b in pairs:
        ratio = f"{b['after'] / b['before']:.2f}" if b["before"] else "-"
        lines.append(f"| {b['scenario']} | {b['path']} | {b['metric']} | {b['before']:g} | {b['after']:g} | {ratio} |")
    return lines + [""]


def markdown(doc: dict, images: list[Path], md_path: Path) -> str:
    m = doc["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `hostmesh bench{' --quick' if doc.get('quick') else ''}` in one run on this machine: "
        f"{m['cpus']} cores, Linux {m['kernel']}, Python {m['python']}. Every path runs the same real tools "
        "(iperf3, sockperf, hey against nginx) from a client pod on node-1 to a server pod on node-0 "
        "of a lab; `hostmesh-same-node` uses a client pod on node-0. The proxies, the client and the "
        "server share the 2 cores, so every proxy is CPU-bound and only ratios from the same run mean much.",
        "",
    ]
    if doc.get("note"):
        lines += [doc["note"], ""]
    if doc.get("reruns"):
        lines += ["Measured again after the run (`--only`/`--paths`, merged with `--merge`): "
                  + "; ".join(", ".join(r) for r in doc["reruns"]) + ".", ""]
    lines += ["## Paths", ""] + [f"- `{p}`: {t}" for p, t in PATH_NOTES] + ["", DROPPED, ""]
    lines += ["## Scenarios", ""] + [f"- **{s}**: {t}" for s, t in SCENARIO_NOTES] + [""]
    lines += ["## Results", "", "```", table(doc), "```", ""]
    lines += drift(doc)
    lines += analysis(doc)
    lines += USAGE
    for img in images:
        rel = img.relative_to(md_path.parent) if md_path.parent in img.parents else img
        lines.append(f"![{img.stem}]({rel})")
    return "\n".join(lines) + "\n"


USAGE = [
    "## Running it",
    "",
    "`hostmesh bench --json docs/benchmarks.json --plots docs/img --report docs/benchmarks.md` (root; 20-40 "
    "minutes on 2 cores). `--quick` proves the harness in about 3 minutes. `--only SCENARIO[,..]` and "
    "`--paths PATH[,..]` run a subset; `--merge FILE` puts a subset's figures into an earlier run's JSON in "
    "place of the same scenario and path (the report then lists what was measured again), e.g. "
    "`hostmesh bench --only pingpong --paths direct,haproxy,hostmesh --merge docs/benchmarks.json --json "
    "docs/benchmarks.json --report docs/benchmarks.md`.",
    "",
    "### ztunnel beside hostmesh (`--ztunnel BIN`)",
    "",
    "Given a ztunnel binary (built by you from istio/ztunnel with `cargo build --release --features testing`; "
    "the project ships and builds none), the bench runs it as the path `ztunnel` in phase 1's lab, after "
    "HAProxy: one ztunnel per node in its dedicated mode (`PROXY_MODE=dedicated`, `PROXY_WORKLOAD_INFO` = "
    "the pod it proxies, `XDS_ADDRESS=\"\"`, `LOCAL_XDS_PATH` = a generated file listing the lab's pods as "
    "HBONE workloads with `trustDomain` and `serviceAccount` set), certificates from its fake CA "
    "(`FAKE_CA=true`, hence `--features testing`; both ends trust its test root). The lab's CA service is "
    "not used: it authenticates nodes by client certificate and ztunnel's CA client sends a bearer token. "
    "Each ztunnel runs inside its pod's network namespace, as a sidecar would: iptables REDIRECT in an own "
    "chain sends the client pod's outbound TCP to its ztunnel's :15001 (ztunnel reads SO_ORIGINAL_DST), "
    "ztunnel's own sockets carry mark 1337 (`PACKET_MARK`) and are left out, and the server pod's ztunnel "
    "listens on the pod's :15008 itself (REDIRECT at the node would rewrite the address ztunnel checks "
    "against `:authority`). Every scenario but http-l7-1000rps (ztunnel has no L7 policy) runs on it, and "
    "idle-10k counts ztunnel's TLS connections in the client pod like hostmesh's. A missing or "
    "non-executable BIN is refused before anything starts; a ztunnel that does not come up is recorded "
    "under errors with its log's tail (`ztunnel setup`). The recorded run used a ztunnel built from "
    "istio/ztunnel outside the repository; tests/lab/test_ztunnel_peer.py runs the same layout against "
    "hostmesh when given one.",
    "",
]


def _v(doc: dict, scenario: str, path: str, metric: str):
    return next((r["value"] for r in doc["results"] if (r["scenario"], r["path"], r["metric"]) == (scenario, path, metric)), None)


def _f(v, unit: str = "") -> str:
    return "not measured" if v is None else f"{v:g}{unit}"


def analysis(doc: dict) -> list[str]:
    """What limits each number on the native core, with this run's figures."""
    g = lambda s, p, m: _v(doc, s, p, m)  # noqa: E731
    out = ["## What limits each number", ""]
    for para in LIMITS:
        out.append(para(g))
    out.append("")
    return out


def _added(g, s: str, p: str, m: str) -> str:
    d, v = g(s, "direct", m), g(s, p, m)
    return "not measured" if None in (d, v) else f"{v - d:.3g}"


LIMITS = []  # filled below: one function per figure, each (g) -> one Markdown paragraph


def _bulk(g) -> str:
    b1, h1, b4, h4 = (g(s, p, "gbit_s") for s in ("bulk-1", "bulk-4") for p in ("hostmesh", "haproxy"))
    d1, d4 = g("bulk-1", "direct", "gbit_s"), g("bulk-4", "direct", "gbit_s")
    same, py = g("bulk-1", "hostmesh-same-node", "gbit_s"), g("bulk-1", "hostmesh-python", "gbit_s")
    t1, t4 = g("bulk-1", "hostmesh-2-threads", "gbit_s"), g("bulk-4", "hostmesh-2-threads", "gbit_s")
    return (f"- **Bulk** (bulk-1 {_f(b1)} vs HAProxy {_f(h1)} Gbit/s, bulk-4 {_f(b4)} vs {_f(h4)}): the CPU. "
            "Two AES-GCM passes (rustls with ring in the agents, OpenSSL in HAProxy), four socket copies and "
            "iperf3's client and server share 2 cores; both proxies are CPU-bound, so more streams buy nothing "
            f"(direct goes from {_f(d1)} to {_f(d4)} with 4 streams, the proxies stay flat). The copy loop "
            "moves up to 256 KiB per read and no Python runs per byte. Without tunnel TLS (same node, one agent) "
            f"it carries {_f(same)} Gbit/s: the crypto and the second agent are the cost. The Python data plane "
            f"carried {_f(py)}. With `dataplane.threads: 2`: {_f(t1)} / {_f(t4)}; there is no idle core for a "
            "second I/O thread here (the difference to one thread is within this VM's run-to-run spread), so "
            "it says nothing about a host with idle cores. " + _bulk_floor(g) + _bulk_cpu(g))


def _bulk_floor(g) -> str:
    """haproxy-plain: the same relays without TLS, the ceiling for any relay here."""
    (p1, h1), (p4, h4) = ((g(s, "haproxy-plain", "gbit_s"), g(s, "haproxy", "gbit_s")) for s in ("bulk-1", "bulk-4"))
    if None in (p1, h1, p4, h4):
        return ""
    c1, c4 = g("bulk-1", "haproxy-plain", "cpu_s_per_gib"), g("bulk-4", "haproxy-plain", "cpu_s_per_gib")
    cpu = f" at {c1:.3g} / {c4:.3g} CPU s/GiB" if None not in (c1, c4) else ""
    return (f"The same two HAProxies with no TLS on the hop (`haproxy-plain`) carry {p1:g} / {p4:g} Gbit/s{cpu}: "
            f"{p1 / h1:.2f}x / {p4 / h4:.2f}x the TLS HAProxy. That is the ceiling of this two-hop topology on this "
            "machine for any relay that copies the bytes through user space, with no crypto at all; a TLS relay "
            "adds the cipher to it, so where it is under 1.5x no TLS proxy can reach the bulk target here. ")


# The run's own cpu_s_per_gib rows (scenarios.bulk) when present, and what was measured around them.
def _bulk_cpu(g) -> str:
    c = {(s, p): g(s, p, "cpu_s_per_gib") for s in ("bulk-1", "bulk-4") for p in ("hostmesh", "haproxy")}
    run = ("" if None in c.values() else
           f"In this run, CPU seconds per GiB carried (each proxy's processes' user+system time over the iperf3 run): "
           f"hostmesh's two agents {c['bulk-1', 'hostmesh']:.3g} / {c['bulk-4', 'hostmesh']:.3g}, HAProxy's two "
           f"processes {c['bulk-1', 'haproxy']:.3g} / {c['bulk-4', 'haproxy']:.3g}. ")
    return run + BULK_CPU


BULK_CPU = (
    "Measured the same way in five alternating `--only bulk-1,bulk-4` runs on this VM (2.6 GHz): hostmesh's two "
    "agents 1.59-1.72 s/GiB on one stream and 1.71-1.80 on four (before the copy loop wrote h2's DATA and rustls' "
    "plaintext straight from their buffers and handed h2 its chunks without a copy: 1.68-1.88 / 1.82-2.04), "
    "HAProxy's two processes 1.64-1.91 / 1.74-2.09: the two spend about the same CPU per byte, so they carry "
    "about the same. The agents' profile (perf): three quarters kernel (socket copies 25%; ~30% the veth, "
    "bridge, netfilter and TCP receive work each sent segment costs in the sender's context), AES-GCM 12-16% "
    "(ring, VAES, AES-128-GCM), memmove 7% (rustls copies each record's plaintext to encrypt it in place, and "
    "out of its read buffer into h2's), h2, tokio and the copy loop under 3% together. A read-ahead under "
    "rustls' 16 KiB reads, smaller h2 chunks and smaller send buffers each cost more than they saved "
    "(docs/dataplane.md, \"Bytes per CPU second\"); this kernel has no kTLS. With everything else on the 2 "
    "cores at ~0.84 s/GiB, 1.5x HAProxy needs the agents at ~0.9 s/GiB, half of OpenSSL's C loop's: out of reach "
    "for a user-space TLS proxy whose fixed costs are that kernel path, those copies and the cipher. Measured: "
    "in eight alternating runs the same HAProxies without TLS (`haproxy-plain`, 1.32-1.62 s/GiB, 94% of it "
    "kernel) carried 1.07-1.24x / 1.24-1.34x the TLS HAProxy, so no TLS relay reaches 1.5x on this machine.")


def _latency(g) -> str:
    return (f"- **Latency** (ping-pong added p50 / p99 over direct: HAProxy {_added(g, 'pingpong', 'haproxy', 'p50_us')} / "
            f"{_added(g, 'pingpong', 'haproxy', 'p99_us')} us, hostmesh {_added(g, 'pingpong', 'hostmesh', 'p50_us')} / "
            f"{_added(g, 'pingpong', 'hostmesh', 'p99_us')} us): a round trip crosses four relay passes (two agents, "
            "two directions), each a tokio wake-up, a read and a TLS record written or read; Python is not on the "
            "path once the connection is decided. One agent without TLS adds "
            f"{_added(g, 'pingpong', 'hostmesh-same-node', 'p50_us')} us (same node). The tail is the shared cores: "
            "a pass waits whenever the client, the server or the other proxy holds the CPU. The Python data plane "
            f"added {_added(g, 'pingpong', 'hostmesh-python', 'p50_us')} us at p50.")


def _http(g) -> str:
    c, ch = g("http-1000rps", "hostmesh", "cpu_per_1k_req"), g("http-1000rps", "haproxy", "cpu_per_1k_req")
    off, py = g("http-1000rps", "hostmesh-telemetry-off", "cpu_per_1k_req"), g("http-1000rps", "hostmesh-python", "cpu_per_1k_req")
    return (f"- **HTTP at 1,000 rps** (added p90 HAProxy {_added(g, 'http-1000rps', 'haproxy', 'p90_ms')} ms, hostmesh "
            f"{_added(g, 'http-1000rps', 'hostmesh', 'p90_ms')} ms; {_f(c)} cores per 1,000 rps per agent, HAProxy "
            f"{_f(ch)}): on a port without HTTP rules each request and answer are bytes to the core, two relay passes "
            "per agent in Rust; the 16 connections are decided once each, so Python's per-connection work "
            f"(decision, access-log record, metrics) is amortised. With telemetry off it was {_f(off)}; the Python "
            f"data plane used {_f(py)}.")


def _l7(g) -> str:
    c, ch = g("http-l7-1000rps", "hostmesh", "cpu_per_1k_req"), g("http-l7-1000rps", "haproxy", "cpu_per_1k_req")
    off = g("http-l7-1000rps", "hostmesh-telemetry-off", "cpu_per_1k_req")
    return (f"- **HTTP with an L7 path rule** (added p90 HAProxy in mode http "
            f"{_added(g, 'http-l7-1000rps', 'haproxy', 'p90_ms')} ms, hostmesh {_added(g, 'http-l7-1000rps', 'hostmesh', 'p90_ms')} "
            f"ms; {_f(c)} cores per 1,000 rps per agent, HAProxy {_f(ch)}): the destination's core serves HTTP/1.1 "
            "on a port with per-request rules itself (hyper) and asks Python per request head (one event, one "
            "answer: the policy engine's verdict); an allow that can be reused (no audit, no dry-run match, no "
            "rule reading a request header) comes back with a token, and the core carries it out itself for the "
            "connection's later heads of the same method, target, Host and framing until the next policy change "
            "(docs/dataplane.md \"Reused answers\"), so after a connection's first request only the finished "
            "exchange reaches Python. With `http_metrics: both` the source's core watches the tunnelled connection "
            "as its bytes pass (httparse reads the heads and chunk sizes; nothing is re-served or re-framed: "
            "docs/dataplane.md \"HTTP metrics\") and reports each exchange with its told head; it served it with "
            "hyper before, ~28 us per request on the source agent where watching costs ~12. Exchanges wait in the core up to 50 ms (or until the next decision or their connection's "
            "end) and reach Python in batches, one wake-up and one loop for all of them (docs/dataplane.md "
            "\"Exchanges in batches\"). No body byte crosses the interpreter. Profiled per request per agent in the lab "
            "(perf stat per thread, docs/dataplane.md \"Where an L7 request's CPU goes\"): the core's one thread 25-37 us "
            "for 3.0-3.6 system calls (1.1-2.0 writev, 1.1-1.45 recvfrom, 0.3-0.45 epoll_wait; no eventfd write, "
            "Python wake-up or cross-thread hand-off per request), about half of it the kernel's TCP, veth and bridge "
            "path of those writes and the rest hyper's HTTP/1.1 connections, h2 and rustls of HBONE, tokio and "
            "malloc (the same load without the L7 rule costs the core ~21 us: hyper adds 6-10); Python's thread 11-12.5 "
            "us, down from 14-16.7 (the records: ~4.5 us per destination record, ~3.5 per told one, the access-log "
            "line ~2.8 at the flush; ~22 wake-ups a second, 37 before the 50 ms delay; ~1.5 us of it the idle agent's "
            "own timers), where HAProxy parses, decides and logs in C in the same pass. Before the reused answers (three events and two records per request) it was "
            "0.1 cores and 1.89x HAProxy's added p90 in the last full run; with the h11 inspector "
            "(`dataplane.l7: python`) 13.7x HAProxy's added p90 and 14.5x its cores (docs/decisions/0004). "
            f"With telemetry off it was {_f(off)}.")


def _connect(g) -> str:
    r, rh, rc = (g("connect-rate", p, "conn_per_s") for p in ("hostmesh", "haproxy", "hostmesh-connect"))
    return (f"- **Connection rate** (hostmesh {_f(r)}, HAProxy {_f(rh)}, CONNECT variant {_f(rc)} conn/s): with "
            "HTTP/1.1 CONNECT every tunnelled connection costs a TLS 1.3 handshake (resumed from a session ticket, "
            "in rustls) and, on each agent, one event to Python and one decision back (plan, policy, identity); "
            "HAProxy pays a resumed handshake per connection too, in C, and decides nothing. HBONE removes the "
            "handshake (a stream on a pooled TLS connection), leaving the two decisions; and a repeat flow (the "
            "same pod pair and port as a connection decided under the current generation) is answered by the core "
            "from the answer Python stored, Python only recording it (decisions/0006). Measured from /proc per "
            "connection per agent (docs/dataplane.md, \"Repeat flows\"): Python's share halved on both agents "
            "(HBONE 124-139 -> 68-75 us, CONNECT 133-144 -> 72-75 us in that lab; what is left is the record, its "
            "metrics and the access-log line), and what limits the rate now is the core: 105-190 us per HBONE "
            "connection per agent, three quarters of it kernel time (three TCP sockets, about 20 system calls), "
            "220-290 us with CONNECT (a resumed handshake still does a fresh key exchange: rustls resumes with "
            "psk_dhe_ke only, kept for forward secrecy, X25519 about 15% of each agent's CPU; the CONNECT head now "
            "rides in the write of the client's Finished, one write and one destination wake-up less), beside hey "
            "and the server on the same 2 cores. Until 2026-12-01 a capture rule held the rate down: the rule that "
            "delivers replies to the agent's transparent sockets also matched a pod's new SYN on a reused 4-tuple "
            "against the agent's TIME_WAIT socket, which answered with an ACK (0.36 SYN retransmits and resets per "
            "connection); limited to packets that are not a pure SYN, HBONE went from 2,820 to 5,604-5,721 conn/s "
            "(docs/capture.md). Each run waits until the pods' TIME_WAIT connections of the run before "
            "have expired: a path run within a minute of another measured half its rate.")


def _memory(g) -> str:
    k, idle, tls, n = (g("idle-10k", "hostmesh", m) for m in ("kib_per_conn", "idle_agent_rss_mib", "tls_connections",
                                                               "connections"))
    kp, ip = g("idle-10k", "hostmesh-python", "kib_per_conn"), g("idle-10k", "hostmesh-python", "idle_agent_rss_mib")
    kc = g("idle-10k", "hostmesh-connect", "kib_per_conn")
    return (f"- **Memory** ({_f(k)} KiB per idle connection per agent, {_f(tls)} TLS connections for {_f(n)} idle "
            "connections): HBONE carries up to 200 streams per TLS connection, so an idle connection costs each "
            "agent its socket, the core's task (about 1 KB: only the bridge's state, the set-up steps are freed "
            "before it), h2's per-stream state, and the Python record of the connection (for /v1/connections, "
            "telemetry and policy re-checks, about 0.5 KiB since the trace context became one int and a repeat "
            "connection shares its stored answer's plan); the rest is malloc's free memory between them. The "
            "telemetry tick reads the live byte counts as one packed bytes object: the tuple, address strings "
            "and LiveConn it built per connection every flush were freed again but kept by malloc, about 0.35 "
            "KiB per idle connection (idle-10k --only runs: 5.1-5.6 KiB before both changes, 3.96-4.04 after). "
            "The core hands freed heap back once a load of short connections is over, too (live.rs Trim), and "
            "the idle agent is measured 5 s after the scenario before: after connect-rate and http-l7-1000rps "
            "it held about 2 MiB of freed heap for longer than 0.5 s. "
            "docs/dataplane.md (Memory) has the split measured in the lab. With HTTP/1.1 CONNECT "
            f"(hostmesh-connect, {_f(kc)} KiB) each connection also holds its own rustls session. The Python "
            f"data plane held {_f(kp)} KiB. **Idle agent** ({_f(idle)} MiB; the Python data plane's agent "
            f"{_f(ip)} MiB in the same run): what every agent loads at start, measured per package in a fresh "
            "interpreter on the start path (52-53 MiB while it loaded pydantic): trio and the standard library it pulls in (ssl and "
            "libcrypto among them) 16 MiB, cryptography 9, the agent with the core 5; the running agent adds 6-7. "
            "Each is used at start, so lazy imports do not move it. pydantic and the configuration and policy "
            "models (12 MiB) left the start path: they are dataclasses checked by agent/schema.py (idle-10k "
            "--only runs: 60.2-60.3 MiB before, 48.9-49.5 after). The CA client no longer loads grpcio and protobuf (19 MiB with their C core's heap and "
            "threads): the core makes the CA's one unary gRPC call over its own h2 and rustls "
            "(docs/decisions/0005). It is measured 5 s after the load scenarios and includes what they left "
            "behind beyond the heap the core hands back. "
            "8,000 rather than 10,000 connections: two descriptors per connection per agent "
            "and this machine caps a process at 20,000 (tests/lab/test_b10k.py tries 10,000: 9,973 to 9,986 held byte-exact in its runs, the "
            "rest reset at the cap).")


def _others(g) -> str:
    z = g("bulk-1", "ztunnel", "gbit_s")
    return ("- **ztunnel**: " + (f"bulk-1 {z:g} Gbit/s; see the table." if z else
                                 "not measured in this run (no ztunnel binary on this machine; `--ztunnel BIN`).")
            + " **hostmesh-connect**: " + ("see the table." if g("bulk-1", "hostmesh-connect", "gbit_s") else
                                         "skipped in this run: the configuration has no `dataplane.tunnel_protocol` "
                                         "yet (its error is under targets), so `hostmesh` itself is the CONNECT "
                                         "tunnel here."))


def _policy(g) -> str:
    p99, load = g("policy-10k", "hostmesh", "decision_p99_us"), g("policy-10k", "hostmesh", "load_s")
    return (f"- **Policy** (decision p99 {_f(p99)} us, loading 10,000 policies {_f(load)} s from JSON, "
            f"{_f(g('policy-10k', 'hostmesh', 'load_yaml_s'))} s from YAML): decisions are indexed per workload and "
            "each policy is compiled once per change into a matcher, so a decision costs a few set lookups; "
            "loading is mostly the validation of each document (agent/schema.py).")


def _discovery(g) -> str:
    d = lambda m: g("discovery-20000", "hostmesh", m)  # noqa: E731
    return (f"- **Discovery** (20,000 pods: {_f(d('cpu_ms_per_event'))} ms of CPU per isolated relevant event, "
            f"{_f(d('cpu_ms_per_irrelevant_event'))} per irrelevant one, change to state p99 "
            f"{_f(d('event_p99_ms'))} ms; counted from once the benchmark's own wait is set up to where the apply "
            "ends): an isolated event is one wake-up of the event loop every 50 ms, which "
            "reads the watch (httptools), decodes the 7 KB pod into the fields discovery keeps (msgspec), "
            "compares it with the stored one and applies the change; run that rarely, each step costs several "
            "times its warm cost on this shared 2-core VM (a pod label change is ~45 us warm in process, the loop's "
            "bare wake-up and read ~0.2 ms). A policy event is the dearest kind (~0.15-0.2 ms above a pod's): "
            "that one document validated (agent/schema.py), then put in force in O(the change) (its namespace's list, "
            "its matcher compiled when first needed, the cached decisions it cannot affect kept; "
            "docs/policy.md). Irrelevant events stop at the comparison, many per read "
            "(docs/kubernetes.md).")


LIMITS += [_bulk, _latency, _http, _l7, _connect, _memory, _policy, _discovery, _others]
