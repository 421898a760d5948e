"""The agent side of the ``discovery`` benchmark (``agent.bench.discovery``): a real
``Agent`` (registry, policies, routing view; no data plane) running the real discovery
start sequence and watches against the parent's fake API server, with the readiness
listener up. It records when each apply finished and which resourceVersion it held,
its own CPU and RSS; it never changes what discovery does.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import threading
import time
import urllib.request

import trio

from agent.bench.cluster import THIS_NODE

# isolated events measured: rounds of pod, slice, pod, policy, pod (~60 ms each); 20
# samples left the mean to a few noisy ones on a shared machine
ISOLATED_ROUNDS = 10


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _thread_cpu() -> dict[str, float]:
    """Each thread's CPU so far (seconds, /proc schedstat: nanoseconds), by its name with
    trio's "<function> from <task>" cut to the function."""
    names = {t.native_id: t.name.split(" from ")[0] for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), "other")
        out[name] = out.get(name, 0.0) + ns / 1e9
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _phase(name: str, d) -> None:
    print(f"discovery bench: {name}: {d.counts}", file=sys.stderr, flush=True)


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _version(d) -> int:
    vs = getattr(d, "versions", None) or d.cache.versions
    return max((int(v) for v in vs.values() if v and str(v).isdigit()), default=0)


def _instrument(disc, log: list, waiters: list) -> None:
    """Note (start, end, version held) for every application of discovered state, and
    wake whoever waits for a version (no polling: the wait costs no CPU). A waiter's
    clocks are read here, when the apply that holds its version ends: what the waiting
    task costs to wake up afterwards is the benchmark's, not the event's."""
    cls = disc.Discovery

    def done(t: float, v: int, clocks: list[float]) -> None:
        log.append((t, clocks[2], v))
        for w in list(waiters):
            if v >= w[0]:
                w[2][:] = clocks
                w[1].set()
                waiters.remove(w)

    def now() -> list[float]:
        return [time.process_time(), time.thread_time(), time.monotonic()]

    for name in ("apply", "apply_now", "flush"):
        fn = getattr(cls, name, None)
        if fn is None:
            continue
        if inspect.iscoroutinefunction(fn):
            async def awrapped(self, *a, _fn=fn, **kw):
                t, v = time.monotonic(), _version(self)
                r = await _fn(self, *a, **kw)
                done(t, v, now())
                return r
            setattr(cls, name, awrapped)
        else:
            def wrapped(self, *a, _fn=fn, **kw):
                # in one go: the version it holds is the one after it, and the benchmark's
                # bookkeeping (the version, the log) starts once the clocks are read
                t = time.monotonic()
                r = _fn(self, *a, **kw)
                clocks = now()
                done(t, _version(self), clocks)
                return r
            setattr(cls, name, wrapped)


def child(api: str, pods: int, port: int) -> dict:
    # the API client's own code is not per-pod memory: loaded before the baseline
    import kubernetes.client  # noqa: F401
    import kubernetes.watch  # noqa: F401

    from agent.app import Agent
    from agent.config import Config
    from agent.k8s import discovery as disc
    from agent.readiness import serve_readiness

    log: list[tuple[float, float, int]] = []
    waiters: list = []
    _instrument(disc, log, waiters)
    cfg = Config.from_obj({"node": {"name": THIS_NODE, "address": "192.168.0.1"},
                           "ports": {"readiness": port, "readiness_bind": "127.0.0.1"},
                           "kubernetes": {"enabled": True, "api_server": api, "token_path": "/nonexistent"}})
    agent = Agent(cfg)
    out: dict = {}
    stalls: list[float] = []

    def call(method: str, path: str) -> dict:
        req = urllib.request.Request(api + path, method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def expect(rv: int) -> tuple[trio.Event, list[float]]:
        """A wait for the first apply that holds version ``rv``: set, with the process and
        trio-thread CPU clocks and the monotonic clock as that apply ended."""
        ev, clocks = trio.Event(), []
        waiters.append((rv, ev, clocks))
        return ev, clocks

    async def applied(rv: int, limit: float = 120) -> list[float]:
        """Once an apply holds version ``rv``: its clocks (``expect``)."""
        ev, clocks = expect(rv)
        with trio.fail_after(limit):
            await ev.wait()
        return clocks

    async def monitor():
        while True:
            t = time.monotonic()
            await trio.sleep(0.005)
            stalls.append((time.monotonic() - t - 0.005) * 1000)

    async def main():
        with trio.fail_after(300 + pods / 50):  # a lost event or watch fails the run, never hangs it
            await measure()

    async def measure():
        async with trio.open_nursery() as n:
            await n.start(serve_readiness, agent)
            # kib_per_pod is over the agent with its API client warmed up: the client's
            # first call per method builds its validators (~20 MiB, whatever the cluster)
            warm = disc.Discovery(agent, cfg.kubernetes, THIS_NODE)
            for kind in disc.KINDS:
                resp = await trio.to_thread.run_sync(lambda k=kind, w=warm: w._call(k, limit=1, _request_timeout=5))
                resp.data, resp.release_conn()  # noqa: B018 - read it all: the server is not cut off
            rss0 = _status("VmRSS")
            t0 = time.monotonic()
            d = await disc.start(agent, n)
            await disc.run(d, n)
            while len(agent.registry) < pods:
                await trio.sleep(0.005)
            _phase("synced", d)
            out["sync_s"] = time.monotonic() - t0
            await trio.sleep(1.0)  # the watches connect
            out["rss_mib"] = _status("VmRSS")
            out["kib_per_pod"] = (out["rss_mib"] - rss0) * 1024 / pods
            # idle CPU rate (the idle watches, the readiness listener): subtracted below
            c, w, lt = time.process_time(), time.monotonic(), time.thread_time()
            await trio.sleep(2.0)
            idle = (time.process_time() - c) / (time.monotonic() - w)
            idle_loop = (time.thread_time() - lt) / (time.monotonic() - w)
            per, loop, by_what, by_thread = [], [], {}, {}
            for what in ["pod", "slice", "pod", "policy", "pod"] * ISOLATED_ROUNDS:
                res = await trio.to_thread.run_sync(call, "POST", f"/bench/send?what={what}&count=1&delay=0.05")
                # the wait is set up before the clocks start: its own cost is the benchmark's
                ev, clocks = expect(int(res["rv"]))
                th0 = _thread_cpu()
                with trio.fail_after(120):
                    c, w, lt = time.process_time(), time.monotonic(), time.thread_time()
                    await ev.wait()
                c1, lt1, w1 = clocks
                for name, t in _thread_cpu().items():
                    by_thread[name] = by_thread.get(name, 0.0) + t - th0.get(name, 0.0)
                per.append((c1 - c) - idle * (w1 - w))
                loop.append((lt1 - lt) - idle_loop * (w1 - w))
                by_what.setdefault(what, []).append(per[-1] * 1000)
            _phase("isolated done", d)
            print("discovery bench: cpu ms per event by kind: " + ", ".join(
                f"{k} {sum(v) / len(v):.3f}" for k, v in by_what.items()) + "; by thread: " + ", ".join(
                f"{k} {v / len(per) * 1000:.3f}" for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1])
                if v / len(per) >= 1e-6), file=sys.stderr, flush=True)
            out["cpu_ms_per_event"] = sum(per) / len(per) * 1000
            out["loop_cpu_ms_per_event"] = sum(loop) / len(loop) * 1000  # the trio thread's share
            e0 = d.counts["events"]
            await trio.to_thread.run_sync(call, "POST", "/bench/send?what=status&count=500&delay=0.05")
            c, w = time.process_time(), time.monotonic()
            while d.counts["events"] < e0 + 500:
                await trio.sleep(0.02)
            await trio.sleep(0.3)  # whatever the events set off (a coalesced apply) runs too
            _phase("irrelevant done", d)
            out["cpu_ms_per_irrelevant_event"] = ((time.process_time() - c) - idle * (time.monotonic() - w)) / 500 * 1000
            n.start_soon(monitor)
            await trio.to_thread.run_sync(call, "POST", f"/bench/load?port={port}")
            while True:
                await trio.sleep(0.5)
                load = await trio.to_thread.run_sync(call, "GET", "/bench/load")
                if load["done"]:
                    break
            lat = []
            for rv, t_send, relevant in load["sent"]:
                if relevant:
                    done = next((t1 for t0_, t1, v in log if v >= int(rv) and t1 >= t_send), None)
                    lat.append((done - t_send) * 1000 if done is not None else 60_000.0)
            _phase("load done", d)
            out["event_p50_ms"], out["event_p99_ms"] = _pct(lat, 50), _pct(lat, 99)
            out["probe_p99_ms"] = _pct(load["probes"], 99)
            out["loop_stall_max_ms"] = max(stalls)
            # relist after 410 Gone: the peak while the new list streams in
            _reset_peak()
            gone = await trio.to_thread.run_sync(call, "POST", "/bench/gone")
            await applied(int(gone["rv"]))  # the first apply holding the relisted version
            await trio.sleep(0.5)
            _phase("relist done", d)
            out["relist_peak_mib"] = _status("VmHWM")
            out["rss_after_relist_mib"] = _status("VmRSS")
            n.cancel_scope.cancel()

    trio.run(main)
    return out
