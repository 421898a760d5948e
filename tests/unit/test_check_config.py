"""`hostmesh check-config` checks everything `hostmesh run` needs, and `run` refuses to
start on the same problems, in one line each naming the setting and the fix, before it
changes anything (issue 21). Real commands; exact messages and exit codes."""

import socket
import subprocess
import sys

import pytest

from agent.identity import store


def hm(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca")
    store.init_dir(d, "cluster.local")
    store.issue_node(d, "n0")
    store.issue_node(d, "n1")
    return d


def free_ports(n=5):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def config(tmp_path, ca, *, cert="n0", key="n0", bundle="bundle.pem", extra="", ports=None):
    o, i, t, m, r = ports or free_ports()
    text = (f"capture: {{enabled: false}}\n"
            f"admin: {{socket: {tmp_path}/admin.sock}}\n"
            f"ports: {{outbound: {o}, inbound_plain: {i}, tunnel: {t}, metrics: {m}, readiness: {r}}}\n"
            f"identity:\n"
            f"  ca_cert: {ca}/nodes/{cert}/cert.pem\n"
            f"  ca_key: {ca}/nodes/{key}/key.pem\n"
            f"  trust_bundle: {ca}/{bundle}\n" + extra)
    f = tmp_path / "config.yaml"
    f.write_text(text)
    return str(f)


def test_a_good_config_is_ok(tmp_path, ca):
    f = config(tmp_path, ca)
    r = hm("check-config", f)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{f}: ok (engine native, tunnel hbone)\n", "")


def test_the_tunnel_protocol_is_named(tmp_path, ca):
    f = config(tmp_path, ca, extra="dataplane: {engine: native}\n")
    r = hm("check-config", f)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{f}: ok (engine native, tunnel hbone)\n", "")
    f = config(tmp_path, ca, extra="dataplane: {engine: native, tunnel_protocol: connect}\n")
    assert hm("check-config", f).stdout == f"{f}: ok (engine native, tunnel connect)\n"


def test_missing_trust_bundle(tmp_path, ca):
    f = config(tmp_path, ca, bundle="nope.pem")
    r = hm("check-config", f)
    assert (r.returncode, r.stderr) == (
        2, f"{f}:7: identity.trust_bundle: {ca}/nope.pem: no such file (create it or correct the path)\n")


def test_key_of_another_certificate(tmp_path, ca):
    f = config(tmp_path, ca, key="n1")
    r = hm("check-config", f)
    assert (r.returncode, r.stderr) == (
        2, f"{f}:6: identity.ca_key: {ca}/nodes/n1/key.pem is not the key of {ca}/nodes/n0/cert.pem "
           "(give the key issued with that certificate (hostmesh ca issue --node NAME writes both))\n")


def test_chain_must_reach_the_bundle(tmp_path, ca):
    other = tmp_path / "other"
    store.init_dir(other, "cluster.local")
    (ca / "other-bundle.pem").write_bytes((other / "bundle.pem").read_bytes())
    f = config(tmp_path, ca, bundle="other-bundle.pem")
    r = hm("check-config", f)
    assert r.returncode == 2
    assert r.stderr.startswith(f"{f}:7: identity.trust_bundle: {ca}/nodes/n0/cert.pem (")
    assert "is not issued by a root in" in r.stderr and r.stderr.count("\n") == 1


def test_port_in_use_is_a_host_problem(tmp_path, ca):
    ports = free_ports()
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("0.0.0.0", ports[2]))
        busy.listen()
        f = config(tmp_path, ca, ports=ports)
        r = hm("check-config", f)
        run = hm("run", "--config", f)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"{f}:3: ports.tunnel: port {ports[2]} is in use by pid ")
    assert r.stderr.endswith("(stop that process, or choose another port)\n")
    # run refuses on the same problem, in one line, before it changes anything
    assert run.returncode == 1 and "Traceback" not in run.stderr and "ExceptionGroup" not in run.stderr
    assert run.stderr.splitlines() == [
        "hostmesh: " + r.stderr.strip(),
        "hostmesh: not started; nothing was changed (capture is disabled)"]


def test_run_refuses_a_config_error_with_exit_2(tmp_path, ca):
    f = config(tmp_path, ca, key="n1", extra="policies: {dir: " + str(tmp_path / "nodir") + "}\n")
    r = hm("run", "--config", f)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"hostmesh: {f}:6: identity.ca_key: ")
    assert lines[1] == (f"hostmesh: {f}:8: policies.dir: {tmp_path}/nodir: policy directory does not exist "
                        "(fix the file (hostmesh check-config names each problem))")


def test_a_yaml_error_is_exit_2_everywhere(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("capture:\n  backend: pf\n")
    want = f"{f}:2: capture.backend: Input should be 'nftables' or 'iptables'"
    for argv in (["check-config", str(f)], ["run", "--config", str(f)], ["capture", "render", "--config", str(f)],
                 ["doctor", "--config", str(f)]):
        r = hm(*argv)
        assert r.returncode == 2, argv
        assert want in r.stderr and "Traceback" not in r.stderr, argv


def test_failure_line_flattens_exception_groups():
    from agent.cli.run import failure_line
    from agent.config import parse_config

    cfg = parse_config("{}")
    err = BaseExceptionGroup("nursery", [ExceptionGroup("inner", [PermissionError(13, "Permission denied", "/x")])])
    assert failure_line(err, cfg) == (
        "the agent stopped: PermissionError: /x: Permission denied (run as root, or with CAP_NET_ADMIN and "
        "CAP_NET_RAW); capture rules stay installed (capture.fail: "
        "closed): pods' new connections are refused until an agent runs; hostmesh capture remove takes them out")
    cfg = parse_config("capture: {fail: open}")
    assert failure_line(RuntimeError("boom"), cfg).endswith(
        "RuntimeError: boom; capture rules stay installed (capture.fail: open): pods' connections flow directly, "
        "unenforced")


def test_a_running_agent_is_recognised_by_its_whole_command_line():
    from agent.preflight import _is_agent

    assert _is_agent("/opt/hostmesh/bin/python /opt/hostmesh/bin/hostmesh run --config /etc/hostmesh/config.yaml")
    assert _is_agent("/work/wt/x/.venv/bin/python -m agent --log-format json run --config /run/hostmesh/lab/l/n/c.yaml")
    assert not _is_agent("nginx: master process /usr/sbin/nginx")
    assert not _is_agent("/usr/bin/python3 -m http.server 15001")


def test_a_port_shared_with_so_reuseport_by_an_unseen_holder_is_free():
    from agent.preflight import _shareable

    with socket.socket() as plain, socket.socket() as shared:
        plain.bind(("0.0.0.0", 0))
        plain.listen()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind(("0.0.0.0", 0))
        shared.listen()
        assert not _shareable(plain.getsockname()[1])
        assert _shareable(shared.getsockname()[1])


def test_a_rejected_policy_file_fails_check_config_but_does_not_stop_run(tmp_path, ca):
    """check-config names the file and line (exit 2); `run` does not refuse on it: it starts
    with the valid files and stays not ready (issue 15 item 12; tests/lab/test_policy_persist)."""
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "bad.yaml").write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                  "metadata: {name: x, namespace: shop}\nspec: {action: NOPE}\n")
    f = config(tmp_path, ca, extra=f"policies: {{dir: {pol}}}\n")
    r = hm("check-config", f)
    assert r.returncode == 2 and f"{pol}/bad.yaml:4" in r.stderr and "Traceback" not in r.stderr
    from agent import preflight
    from agent.config import load_config

    problems = preflight.check(load_config(f), f)
    assert [p.kind for p in problems] == ["policy"]
