"""Parsers for what the real load tools print (iperf3 -J, sockperf, hey -o csv), and
percentiles. Pure: text in, numbers out."""

from __future__ import annotations

import json
import math
import re


class ToolOutputError(ValueError):
    """A tool's output that does not hold the figures we need (the tool failed)."""


def iperf3_gbit(text: str) -> float:
    try:
        doc = json.loads(text)
    except ValueError:
        raise ToolOutputError(f"iperf3 printed no JSON: {text[-200:]!r}") from None
    if "error" in doc:
        raise ToolOutputError(f"iperf3: {doc['error']}")
    try:
        return doc["end"]["sum_received"]["bits_per_second"] / 1e9
    except (KeyError, TypeError):
        raise ToolOutputError("iperf3 JSON has no end.sum_received") from None


def iperf3_bytes(text: str) -> int:
    """Bytes the iperf3 server received (the run's total over all streams)."""
    try:
        return int(json.loads(text)["end"]["sum_received"]["bytes"])
    except (ValueError, KeyError, TypeError):
        raise ToolOutputError("iperf3 JSON has no end.sum_received.bytes") from None


_SOCKPERF = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")


def sockperf_percentiles(text: str) -> dict[str, float]:
    """{"p50_us", "p99_us", "p999_us"} from `sockperf ping-pong` output (microseconds)."""
    found = {float(p): float(v) for p, v in _SOCKPERF.findall(text)}
    want = {"p50_us": 50.0, "p99_us": 99.0, "p999_us": 99.9}
    if not all(v in found for v in want.values()):
        raise ToolOutputError(f"sockperf printed no percentiles: {text[-300:]!r}")
    return {k: found[v] for k, v in want.items()}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of ``values``."""
    if not values:
        raise ToolOutputError("no samples")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def hey_csv(text: str) -> dict[str, float]:
    """Per-request rows of `hey -o csv` -> count, errors, latency percentiles (ms), rate."""
    lat: list[float] = []
    errors = 0
    last_offset = 0.0
    for line in text.splitlines()[1:]:
        parts = line.split(",")
        if len(parts) < 8:
            continue
        try:
            rt, status, offset = float(parts[0]), int(parts[6]), float(parts[7])
        except ValueError:
            continue
        if status != 200:
            errors += 1
            continue
        lat.append(rt * 1000.0)
        last_offset = max(last_offset, offset + rt)
    if not lat:
        raise ToolOutputError(f"hey recorded no successful request: {text[-300:]!r}")
    return {
        "requests": len(lat),
        "errors": errors,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "rps": len(lat) / last_offset if last_offset > 0 else 0.0,
    }


def proc_cpu_seconds(stat_text: str, clk_tck: int = 100) -> float:
    """utime + stime from /proc/<pid>/stat."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clk_tck


def proc_rss_kib(status_text: str) -> int:
    m = re.search(r"^VmRSS:\s+(\d+)\s+kB", status_text, re.M)
    if not m:
        raise ToolOutputError("no VmRSS in /proc status")
    return int(m.group(1))


def ss_peer_port_count(text: str, ports: range | set[int] | list[int]) -> int:
    """Established TCP connections in `ss -Htn state established` output whose peer
    port is in ``ports`` (the columns: Recv-Q, Send-Q, local address:port, peer address:port)."""
    want = set(ports)
    n = 0
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        try:
            port = int(cols[3].rsplit(":", 1)[1])
        except (IndexError, ValueError):
            continue
        n += port in want
    return n


def find_key(doc: object, key: str) -> float | None:
    """The first number stored under ``key`` anywhere in a JSON document (the agent's
    /v1/stats nests the core's counters by section)."""
    if isinstance(doc, dict):
        v = doc.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        children = doc.values()
    elif isinstance(doc, list):
        children = doc
    else:
        return None
    for c in children:
        if (found := find_key(c, key)) is not None:
            return found
    return None
