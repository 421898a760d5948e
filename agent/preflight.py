"""What `hostmesh run` needs before it starts, checked without starting anything.

`hostmesh check-config` and `hostmesh run` both call ``check``: every file the
configuration names exists and parses, the node CA's key is its certificate's key and
its chain reaches a root of the trust bundle, the policy directory and the static
workloads load, the admin group exists, the capture backend's binary is there and the
ports are free (or held by a running hostmesh agent, which a replacement shares with
SO_REUSEPORT). Each problem names the setting (``file:line: identity.ca_key: ...``) and
the fix. A problem is ``config`` (exit 2: change the configuration) or ``host`` (exit 1:
the configuration is fine, this host is not ready for it).

Reads files and /proc; never listens, installs rules or writes anything (it binds, and
closes at once, port 0 of a bind address to learn whether this host has it, and a held
port whose holder it cannot see to learn whether that holder shares it).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config


@dataclass(frozen=True)
class Problem:
    where: str  # "config.yaml:12" (the setting's line), or the config path
    setting: str  # "identity.ca_key"
    message: str
    fix: str
    # "config": exit 2; "host": exit 1; "policy": a rejected policy file, exit 2 for
    # check-config, but `run` starts without it and stays not ready (docs/policy.md)
    kind: str = "config"

    def __str__(self) -> str:
        return f"{self.where}: {self.setting}: {self.message}" + (f" ({self.fix})" if self.fix else "")


def exit_code(problems: list[Problem]) -> int:
    if any(p.kind in ("config", "policy") for p in problems):
        return 2
    return 1 if problems else 0


def check(cfg: Config, path: str, text: str | None = None) -> list[Problem]:
    """Every problem that would stop ``hostmesh run --config path`` (or make it run broken)."""
    where = _locator(path, text)
    out: list[Problem] = []

    def add(setting: str, message: str, fix: str, kind: str = "config") -> None:
        out.append(Problem(where(setting), setting, message, fix, kind))

    _identity(cfg, add)
    _files(cfg, add)
    _policies_and_workloads(cfg, add)
    _host(cfg, add)
    return out


def _locator(path: str, text: str | None):
    doc = None
    if text is not None:
        from agent import yamlpos

        try:
            doc = yamlpos.load_one(text, path)
        except yamlpos.YamlError:
            doc = None
    return lambda setting: doc.where(tuple(setting.split("."))) if doc is not None else path


def _read(setting: str, value: str, add) -> bytes | None:
    from agent.files import FileProblem, read_bytes

    try:
        return read_bytes(value)
    except FileProblem as e:
        msg = str(e)
        fix = ("create it or correct the path" if msg.endswith("no such file") else "give the file's path"
               if "directory" in msg else "check its mode and owner (the agent's user reads it)")
        add(setting, msg, fix)
    return None


def _identity(cfg: Config, add) -> None:
    from agent.identity import ca

    c = cfg.identity
    if bool(c.ca_cert) != bool(c.ca_key):
        have, miss = ("ca_cert", "ca_key") if c.ca_cert else ("ca_key", "ca_cert")
        add(f"identity.{miss}", f"identity.{have} is set but identity.{miss} is not", "give both, or neither")
        return
    bundle_pem = _read("identity.trust_bundle", c.trust_bundle, add) if c.trust_bundle else None
    roots = []
    if bundle_pem is not None:
        try:
            roots = ca.load_certs(bundle_pem)
        except ValueError as e:
            add("identity.trust_bundle", f"{c.trust_bundle}: not a PEM certificate bundle ({e})",
                "give the bundle hostmesh ca init wrote (bundle.pem)")
            bundle_pem = None
    if c.cert_dir and not Path(c.cert_dir).is_dir():
        add("identity.cert_dir", f"{c.cert_dir}: no such directory", "create it or correct the path")
    if c.ca_address:  # the CA service's mode: the files the client opens, no signing key
        for setting in ("ca_root", "ca_credential_cert", "ca_credential_key", "ca_token_path"):
            path = getattr(c, setting)
            if path:
                _read(f"identity.{setting}", path, add)
        return
    if not c.ca_cert:
        return
    cert_pem = _read("identity.ca_cert", c.ca_cert, add)
    key_pem = _read("identity.ca_key", c.ca_key, add)
    if cert_pem is None or key_pem is None:
        return
    try:
        issuer = ca.load_certs(cert_pem)[0]
    except (ValueError, IndexError):
        add("identity.ca_cert", f"{c.ca_cert}: not a PEM certificate", "give the node intermediate (cert.pem)")
        return
    try:
        key = ca.load_key(key_pem)
    except (ValueError, TypeError) as e:
        add("identity.ca_key", f"{c.ca_key}: not an unencrypted PEM private key ({e})", "give the node key (key.pem)")
        return
    if key.public_key().public_numbers() != issuer.public_key().public_numbers():
        add("identity.ca_key", f"{c.ca_key} is not the key of {c.ca_cert}",
            "give the key issued with that certificate (hostmesh ca issue --node NAME writes both)")
        return
    if c.trust_bundle and bundle_pem is not None:
        if not any(r == issuer or ca.issued_by(issuer, r) for r in roots):
            add("identity.trust_bundle", f"{c.ca_cert} ({issuer.subject.rfc4514_string()}) is not issued by a root "
                f"in {c.trust_bundle}", "re-issue the node intermediate from a root in the bundle, or add its root")


def _files(cfg: Config, add) -> None:
    """Other files the agent opens at start."""
    log = cfg.telemetry.access_log
    if log not in ("stderr", "off") and not Path(log).parent.is_dir():
        add("telemetry.access_log", f"{Path(log).parent}: no such directory", "create it or use stderr")
    k = cfg.telemetry.kafka
    if k is not None:
        for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(k, field):
                _read(f"telemetry.kafka.{field}", getattr(k, field), add)
    kube = cfg.kubernetes
    if kube.enabled and kube.api_server is None:
        for field in ("token_path", "ca_path"):
            if not Path(getattr(kube, field)).exists():
                add(f"kubernetes.{field}", f"{getattr(kube, field)}: no such file",
                    "run in a pod with its service account mounted, or set kubernetes.api_server")
    parent = Path(cfg.admin.socket).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        add("admin.socket", f"{parent} is not a directory", "give a path under a directory (default /run/hostmesh)")
    if cfg.admin.group:
        import grp

        try:
            grp.getgrnam(cfg.admin.group)
        except KeyError:
            add("admin.group", f"no group named {cfg.admin.group!r}", "create it (groupadd) or unset admin.group")


def _policies_and_workloads(cfg: Config, add) -> None:
    if cfg.policies.dir:
        from agent.app import load_policy_dir

        try:
            load_policy_dir(cfg.policies.dir, cfg.policies.root_namespace)
        except ValueError as e:
            # a file the loader refuses does not stop `run`: the valid files are enforced and
            # the node stays not ready, naming the file (issue: never enforce less silently)
            kind = "policy" if Path(cfg.policies.dir).is_dir() else "config"
            add("policies.dir", str(e), "fix the file (hostmesh check-config names each problem)", kind)
        except OSError as e:
            add("policies.dir", f"{cfg.policies.dir}: cannot read: {e.strerror}", "check its mode and owner")
    from agent.state.workloads import WorkloadError, workload_from_json

    for i, wc in enumerate(cfg.workloads):
        try:
            workload_from_json(wc.to_dict(exclude_none=True), local_node=cfg.node.name)
        except WorkloadError as e:
            add(f"workloads.{i}", f"{wc.uid}: {e}", "correct the entry")


def _host(cfg: Config, add) -> None:
    if cfg.capture.enabled:
        binary = "nft" if cfg.capture.backend == "nftables" else "iptables-restore"
        if shutil.which(binary) is None:
            add("capture.backend", f"{binary} not found",
                f"apt-get install {cfg.capture.backend}, or capture.enabled: false", "host")
    from agent.drain import listening_inodes, read_proc_tcp

    p = cfg.ports
    for setting, addr in (("ports.metrics_bind", p.metrics_bind), ("ports.readiness_bind", p.readiness_bind)):
        why = _unbindable(addr)
        if why:
            add(setting, f"{addr}: {why}", "use an address of this host (or 0.0.0.0 / 127.0.0.1)", "host")
    named = {"ports.outbound": p.outbound, "ports.inbound_plain": p.inbound_plain, "ports.tunnel": p.tunnel,
             "ports.metrics": p.metrics, "ports.readiness": p.readiness}
    held = listening_inodes(read_proc_tcp(), named.values())
    owners = _socket_owners({i for s in held.values() for i in s}) if any(held.values()) else {}
    for setting, port in named.items():
        others = {owners.get(i, (None, "an unknown process")) for i in held[port]}
        others = {o for o in others if not _is_agent(o[1])}
        if others and all(pid is None for pid, _ in others) and _shareable(port):
            others = set()  # a holder we cannot see (another PID namespace) shares it as an agent would
        if others:
            pid, cmd = sorted(others, key=str)[0]
            who = f"pid {pid} ({cmd[:60]})" if pid else cmd
            add(setting, f"port {port} is in use by {who}",
                "stop that process, or choose another port", "host")


def _unbindable(addr: str) -> str | None:
    import ipaddress
    import socket

    try:
        family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    except ValueError:
        return "not an IP address"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr, 0))
        except OSError as e:
            return e.strerror or str(e)
    return None


def _shareable(port: int) -> bool:
    """Whether this process could bind ``port`` beside its listeners, as the agent's own
    SO_REUSEPORT listeners do (same user, SO_REUSEPORT on both)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _is_agent(cmdline: str) -> bool:
    """A hostmesh agent: a replacement shares its ports (SO_REUSEPORT), so they are not busy."""
    words = cmdline.split()
    return "run" in words and any(w.endswith("hostmesh") or w == "agent" for w in words)


def _socket_owners(inodes: set[str]) -> dict[str, tuple[int, str]]:
    """socket inode -> (pid, command line) of a process holding it (needs root for others' fds)."""
    want = {f"socket:[{i}]": i for i in inodes}
    out: dict[str, tuple[int, str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in want and want[target] not in out:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    cmd = "?"
                out[want[target]] = (int(pid), cmd.strip())
        if len(out) == len(want):
            break
    return out
