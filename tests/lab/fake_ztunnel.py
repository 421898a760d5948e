#!/usr/bin/env python3
"""A stand-in for a ztunnel binary, for `hostmesh bench --ztunnel` (test_bench_quick):
checks the environment the bench gives a dedicated-mode ztunnel, then relays like one
(not HBONE: plain TCP with a one-line header). Role by PROXY_WORKLOAD_INFO: the client
pod's proxy takes :15001 (the pod's REDIRECT capture; the original destination from
SO_ORIGINAL_DST) to the destination's :15008, its own socket marked out of the capture;
the server pod's takes :15008 and connects the named port. Each runs in its pod's
namespace. Proves the bench's plumbing (capture rules, process start, readiness,
cleanup), not ztunnel."""

import os
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80


def check_env() -> str:
    env = os.environ
    want = {"PROXY_MODE": "dedicated", "XDS_ADDRESS": "", "FAKE_CA": "true", "ENABLE_ORIG_SRC": "false",
            "PACKET_MARK": "1337"}
    for k, v in want.items():
        if env.get(k) != v:
            sys.exit(f"fake ztunnel: {k}={env.get(k)!r}, want {v!r}")
    with open(env["LOCAL_XDS_PATH"]) as f:
        text = f.read()
    if "workloads:" not in text or "protocol: HBONE" not in text:
        sys.exit("fake ztunnel: LOCAL_XDS_PATH lists no HBONE workloads")
    return env["PROXY_WORKLOAD_INFO"].split("/")[1]


def pump(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(262144):
            b.sendall(data)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def bridge(a: socket.socket, b: socket.socket) -> None:
    t = threading.Thread(target=pump, args=(b, a), daemon=True)
    t.start()
    pump(a, b)
    t.join()
    a.close()
    b.close()


def outbound(c: socket.socket) -> None:
    raw = c.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, ip = struct.unpack("!H", raw[2:4])[0], socket.inet_ntoa(raw[4:8])
    u = socket.socket()
    u.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(os.environ["PACKET_MARK"]))  # out of the capture
    u.settimeout(10)
    u.connect((ip, 15008))
    u.settimeout(None)
    u.sendall(f"{ip}:{port}\n".encode())
    bridge(c, u)


def inbound(c: socket.socket) -> None:
    head = b""
    while not head.endswith(b"\n"):
        b = c.recv(1)
        if not b:
            return c.close()
        head += b
    ip, port = head.decode().strip().rsplit(":", 1)
    u = socket.create_connection((ip, int(port)), timeout=10)
    u.settimeout(None)
    bridge(c, u)


def main() -> None:
    role = check_env()
    port, handler = (15008, inbound) if role == "srv" else (15001, outbound)
    ls = socket.create_server(("0.0.0.0", port), backlog=1024, reuse_port=True)
    while True:
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
