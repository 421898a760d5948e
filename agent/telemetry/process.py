"""The agent's process metrics as Prometheus' client libraries name them (and ztunnel
exports them): ``process_cpu_seconds_total``, ``process_open_fds``, ``process_max_fds``,
``process_resident_memory_bytes``, ``process_virtual_memory_bytes``,
``process_start_time_seconds`` — summed over the agent's processes (the supervisor and
its workers), read from /proc at scrape time. Parsing is pure (``parse_stat``); only
``render`` reads files. A process that went away is skipped, never an error."""

from __future__ import annotations

import os
import resource

from agent.telemetry.metrics import _num

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_stat(text: str) -> dict[str, float]:
    """/proc/<pid>/stat -> cpu seconds, rss and vsize bytes, start (ticks since boot)."""
    f = text.rsplit(")", 1)[1].split()
    # fields after the command: state=0 ... utime=11 stime=12 starttime=19 vsize=20 rss=21
    return {"cpu": (int(f[11]) + int(f[12])) / _TICK, "vsize": float(f[20]), "rss": float(int(f[21]) * _PAGE),
            "start_ticks": float(f[19])}


def _boot_time() -> float:
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def render(pids: list[int]) -> str:
    cpu = rss = vsize = fds = 0.0
    start = None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                st = parse_stat(fh.read())
            n = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, ValueError, IndexError):
            continue
        cpu, rss, vsize, fds = cpu + st["cpu"], rss + st["rss"], vsize + st["vsize"], fds + n
        if start is None:
            start = _boot_time() + st["start_ticks"] / _TICK
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    rows = [
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu),
        ("process_open_fds", "gauge", "Number of open file descriptors.", fds),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.", float(soft)),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize),
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
         start or 0.0),
    ]
    out = []
    for name, kind, help_, v in rows:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {_num(round(v, 3))}"]
    return "\n".join(out) + "\n"
