"""A blocking client for the admin API (`hostmesh ctl`, the lab, the CNI helper)."""

from __future__ import annotations

import json
import os
import socket
import stat

import h11


class AdminUnavailable(OSError):
    """The admin socket could not be reached; str() names the path and the reason."""


class AdminClient:
    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, content_type: str | None = None,
                headers: dict | None = None):
        if isinstance(body, (dict, list)):
            data, content_type = json.dumps(body).encode(), content_type or "application/json"
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body or b""
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            mode = None  # connect() below names the reason
        if mode is not None and not stat.S_ISSOCK(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "a special file"
            raise AdminUnavailable(f"{self.path}: is {kind}, not the agent's admin socket (see admin.socket)")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except FileNotFoundError:
            raise AdminUnavailable(f"{self.path}: no such socket (is the agent running?)") from None
        except PermissionError:
            raise AdminUnavailable(f"{self.path}: permission denied (run as root or a member of the admin group)") from None
        except ConnectionRefusedError:
            raise AdminUnavailable(f"{self.path}: connection refused (stale socket: is the agent running?)") from None
        except OSError as e:
            raise AdminUnavailable(f"{self.path}: {e.strerror or e}") from None
        try:
            conn = h11.Connection(h11.CLIENT)
            hs = [("host", "hostmesh"), ("content-length", str(len(data)))]
            if content_type:
                hs.append(("content-type", content_type))
            hs += list((headers or {}).items())
            try:
                s.sendall(conn.send(h11.Request(method=method, target=path, headers=hs))
                          + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered early (413, 403) and closed: read what it said
            status, chunks = 0, []
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    try:
                        d = s.recv(65536)
                    except ConnectionResetError:
                        d = b""
                    conn.receive_data(d)
                    continue
                if isinstance(ev, h11.Response):
                    status = ev.status_code
                elif isinstance(ev, h11.Data):
                    chunks.append(ev.data)
                elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        except (OSError, h11.ProtocolError) as e:
            raise AdminUnavailable(f"{self.path}: {e}") from None
        finally:
            s.close()
        raw = b"".join(chunks)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")
