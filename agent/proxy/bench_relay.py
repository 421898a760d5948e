"""Micro-benchmark of the socket layer: loopback client -> relay -> server.

Measures bulk throughput (GB/s, one direction) and ping-pong latency (p50/p99 us, 64-byte
messages) for three relays: the epoll engine (``agent.proxy.engine``), the plain trio
relay (``agent.proxy.relay_trio``) and a blocking-thread relay as the reference. The
client and server run in a child process, so the relay under test has its own GIL.

    python -m agent.proxy.bench_relay [--relays epoll,trio,thread] [--bulk-mib 2048] [--rounds 20000]

Prints one JSON object per relay. It measures; it never decides anything about traffic.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

BUF = 256 * 1024  # NOTES.md: 256 KiB buffers; 64 KiB halves relay throughput
MSG = 64  # ping-pong message size


def _nodelay(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# ---- the child: server and client --------------------------------------------------
def _serve(ls: socket.socket) -> None:
    """Conn 1 is bulk (count and ack), conn 2 is echo."""
    while True:
        c, _ = ls.accept()
        _nodelay(c)
        threading.Thread(target=_serve_one, args=(c,), daemon=True).start()


def _serve_one(c: socket.socket) -> None:
    kind = c.recv(1)
    buf = bytearray(BUF)
    if kind == b"B":
        total = 0
        while (n := c.recv_into(buf)) > 0:
            total += n
        c.sendall(str(total).encode())
        c.shutdown(socket.SHUT_WR)
    else:
        while True:
            n = c.recv_into(buf)
            if n == 0:
                break
            c.sendall(buf[:n])
    c.close()


def _client(port: int, bulk_mib: int, rounds: int) -> dict:
    out: dict = {}
    c = _nodelay(socket.create_connection(("127.0.0.1", port)))
    c.sendall(b"B")
    chunk = b"x" * (1 << 20)
    t0 = time.perf_counter()
    for _ in range(bulk_mib):
        c.sendall(chunk)
    c.shutdown(socket.SHUT_WR)
    got = b""
    while (d := c.recv(64)):
        got += d
    dt = time.perf_counter() - t0
    assert int(got) == bulk_mib << 20, got
    out["bulk_gb_s"] = round((bulk_mib << 20) / dt / 1e9, 3)
    c.close()
    c = _nodelay(socket.create_connection(("127.0.0.1", port)))
    c.sendall(b"E")
    msg = b"p" * MSG
    lat = []
    for _ in range(rounds):
        t = time.perf_counter()
        c.sendall(msg)
        n = 0
        while n < MSG:
            n += len(c.recv(MSG - n))
        lat.append(time.perf_counter() - t)
    c.close()
    lat.sort()
    out["pingpong_p50_us"] = round(lat[len(lat) // 2] * 1e6, 1)
    out["pingpong_p99_us"] = round(lat[int(len(lat) * 0.99)] * 1e6, 1)
    return out


def child_main(bulk_mib: int, rounds: int) -> None:
    ls = socket.create_server(("127.0.0.1", 0))
    print(ls.getsockname()[1], flush=True)
    threading.Thread(target=_serve, args=(ls,), daemon=True).start()
    port = int(sys.stdin.readline())
    if port:
        print(json.dumps(_client(port, bulk_mib, rounds)), flush=True)
    print(json.dumps(_client(int(sys.stdin.readline()), bulk_mib, rounds)), flush=True)


# ---- the parent: relays ---------------------------------------------------------------
def _thread_relay(ls: socket.socket, upstream: int) -> None:
    def copy(src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(BUF)
        view = memoryview(buf)
        try:
            while (n := src.recv_into(buf)) > 0:
                dst.sendall(view[:n])
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    while True:
        try:
            a, _ = ls.accept()
        except OSError:
            return
        b = _nodelay(socket.create_connection(("127.0.0.1", upstream)))
        _nodelay(a)
        threading.Thread(target=copy, args=(a, b), daemon=True).start()
        threading.Thread(target=copy, args=(b, a), daemon=True).start()


async def _layer_relay(kind: str, ls: socket.socket, upstream: int, ready) -> None:
    import trio

    from agent.proxy.engines import open_socket_layer

    cfg = SimpleNamespace(engine=kind, buffer_bytes=BUF, idle_timeout_s=3600.0)
    tls = trio.socket.from_stdlib_socket(ls)
    async with open_socket_layer(cfg, lambda fc: None) as layer:
        ready()
        n = 0
        while True:
            a, _ = await tls.accept()
            a = a.detach()
            a = _nodelay(socket.socket(fileno=a))
            b = _nodelay(socket.create_connection(("127.0.0.1", upstream)))
            n += 1
            layer.add(a, b, conn_id=n, tag="bench")


def run_one(kind: str, bulk_mib: int, rounds: int) -> dict:
    child = subprocess.Popen([sys.executable, "-m", "agent.proxy.bench_relay", "--child",
                              "--bulk-mib", str(bulk_mib), "--rounds", str(rounds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        upstream = int(child.stdout.readline())
        # a direct run first (port 0 = skip) only for the "direct" reference
        if kind == "direct":
            child.stdin.write("0\n" + f"{upstream}\n")
            child.stdin.flush()
            return {"relay": kind, **json.loads(child.stdout.readline())}
        ls = socket.create_server(("127.0.0.1", 0))
        if kind == "thread":
            threading.Thread(target=_thread_relay, args=(ls, upstream), daemon=True).start()
        else:
            import trio

            started = threading.Event()
            threading.Thread(target=lambda: _trio_quietly(trio, kind, ls, upstream, started.set),
                             daemon=True).start()
            started.wait(10)
        child.stdin.write("0\n" + f"{ls.getsockname()[1]}\n")
        child.stdin.flush()
        return {"relay": kind, **json.loads(child.stdout.readline())}
    finally:
        child.kill()
        child.wait()


def _trio_quietly(trio, kind, ls, upstream, ready) -> None:
    try:
        trio.run(_layer_relay, kind, ls, upstream, ready)
    except BaseException:  # the benchmark process exits under it
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--relays", default="direct,thread,epoll,trio")
    ap.add_argument("--bulk-mib", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=20000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.bulk_mib, args.rounds)
        return 0
    for kind in args.relays.split(","):
        print(json.dumps(run_one(kind, args.bulk_mib, args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
