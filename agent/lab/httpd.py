"""A tiny HTTP server for lab pods: answers every request with what it saw.

``python -m agent.lab.httpd --port 8080`` in a pod's namespace. The JSON body names the
client address the server saw (so the demo and tests can show the source IP survived
the mesh), the method, path and headers. ``/bytes/N`` answers N bytes (bench).
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body_in = self.rfile.read(length) if length else b""
        if self.path.startswith("/bytes/"):
            body = b"x" * int(self.path.split("/")[2])
            ctype = "application/octet-stream"
        else:
            body = json.dumps({
                "client": f"{self.client_address[0].removeprefix('::ffff:')}:{self.client_address[1]}",
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers),
                "body_bytes": len(body_in),
            }).encode() + b"\n"
            ctype = "application/json"
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, fmt: str, *args) -> None:  # quiet: the demo narrates instead
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bind", default="::")
    a = p.parse_args()

    class Server(ThreadingHTTPServer):
        address_family = __import__("socket").AF_INET6 if ":" in a.bind else __import__("socket").AF_INET
        daemon_threads = True

    Server((a.bind, a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
