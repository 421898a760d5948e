"""Messages a newcomer met (issue 21), each through the real command: exact text, exit
code (0 ok, 1 a check failed, 2 usage or configuration error), no traceback."""

import argparse
import subprocess
import sys

import pytest

from agent.cli.lab import _split_name
from agent.identity import store
from agent.lab.model import TopologyError, parse_topology
from agent.rbac.loader import PolicyError, load_documents


def hm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


POLICY = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n"


@pytest.mark.parametrize("spec, expect", [
    ("spec:\n  action: deny\n",
     "p.yaml:5: spec.action: 'deny' is not an action: use ALLOW, DENY or AUDIT (upper case: DENY)"),
    ("spec:\n  action: CUSTOM\n", "p.yaml:5: spec.action: CUSTOM (external authorization) is not supported"),
    ("spec:\n  rules:\n  - from:\n    - source:\n      principals: [a]\n",
     "p.yaml:7: spec.rules[0].from[0].source: must be a mapping, but it is empty "
     "(are the lines below it indented under it?)\np.yaml:8: spec.rules[0].from[0].principals: unknown field"),
])
def test_policy_messages(spec, expect):
    with pytest.raises(PolicyError) as e:
        load_documents(POLICY + spec, "p.yaml")
    assert str(e.value) == expect


def test_kind_list_from_kubectl_is_accepted_with_lines():
    items = "".join(f"- {line}\n" if i == 0 else f"  {line}\n"
                    for n in ("a", "b") for i, line in enumerate(POLICY.replace("name: p", f"name: {n}").splitlines()))
    text = "apiVersion: v1\nkind: List\nitems:\n" + items
    assert [d.name for d in load_documents(text, "l.yaml")] == ["a", "b"]
    with pytest.raises(PolicyError) as e:
        load_documents(text + "  spec: {action: deny}\n", "l.yaml")
    assert str(e.value) == "l.yaml:10: spec.action: 'deny' is not an action: use ALLOW, DENY or AUDIT (upper case: DENY)"


def test_pod_name_message_has_no_regex():
    with pytest.raises(TopologyError) as e:
        parse_topology("nodes: 1\npods:\n  - {name: Web_1, node: 0}\n", "t.yaml")
    assert str(e.value) == ("t.yaml:3: pods[0].name: 'Web_1' is not a pod name: 1-63 lower-case letters, digits "
                            "and '-', starting and ending with a letter or digit")


def test_lab_name_after_the_pod():
    args = argparse.Namespace(name="lab", argv=["--name", "nu1", "--", "true"])
    assert _split_name(args) == ["true"] and args.name == "nu1"
    args = argparse.Namespace(name="lab", argv=["--name=nu2", "curl", "-s"])
    assert _split_name(args) == ["curl", "-s"] and args.name == "nu2"
    args = argparse.Namespace(name="lab", argv=["--", "cmd", "--name", "x"])  # the command's own --name stays
    assert _split_name(args) == ["cmd", "--name", "x"] and args.name == "lab"


def test_ca_messages(tmp_path):
    ca = tmp_path / "ca"
    store.init_dir(ca)
    store.issue_node(ca, "n0")
    r = hm("ca", "inspect", str(tmp_path / "nonexist.pem"))
    assert (r.returncode, r.stderr) == (2, f"hostmesh: {tmp_path}/nonexist.pem: no such file\n")
    r = hm("ca", "issue", "--dir", str(ca), "--spiffe-id", "spiffe://cluster.local/ns/a/sa/b", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "hostmesh: ca issue --spiffe-id needs --out DIR (where cert.pem and key.pem go)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]  # nothing written into the current directory
    # inspect: whole subjects, and the chain checked against a bundle
    long_leaf = tmp_path / "leaf"
    store.issue_leaf(ca, "spiffe://cluster.local/ns/a-rather-long-namespace/sa/and-a-long-account", long_leaf, "n0")
    r = hm("ca", "inspect", str(long_leaf / "cert.pem"), "--bundle", str(ca / "bundle.pem"))
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert "CN=hostmesh node n0,O=hostmesh" in rows[3] and rows[2].endswith("signed by #1")
    assert rows[3].endswith("reaches the bundle")
    # retire right after a rotation: node intermediates of the old root would be stranded
    store.init_dir(ca, rotate=True)
    r = hm("ca", "inspect", str(long_leaf / "cert.pem"), "--bundle", str(ca / "root.pem"))
    assert r.returncode == 1 and r.stdout.splitlines()[3].endswith("NOT in the bundle")
    r = hm("ca", "retire", "--dir", str(ca))
    assert (r.returncode, r.stderr) == (1, (
        f"hostmesh: {ca}: node intermediates not issued by the current root: n0; their SVIDs would not chain to the "
        f"bundle once retired. Re-issue them first (hostmesh ca issue --dir {ca} --node NAME), or --force\n"))
    assert len((ca / "bundle.pem").read_text().split("BEGIN CERTIFICATE")) == 3  # both roots kept
    store.issue_node(ca, "n0")
    r = hm("ca", "retire", "--dir", str(ca))
    assert r.returncode == 0 and "1 old root(s) removed" in r.stdout


def test_capture_messages(tmp_path):
    r = hm("capture", "status", "--netns", "e-no-such-ns")
    assert (r.returncode, r.stderr) == (2, "hostmesh: --netns e-no-such-ns: no such network namespace (ip netns list)\n")
    r = hm("doctor", "--netns", "e-no-such-ns")
    assert (r.returncode, r.stderr) == (2, "hostmesh doctor: no network namespace 'e-no-such-ns' (ip netns list)\n")
