"""deploy/: the Kubernetes manifests are valid for the API server and agree with the agent.

Offline, no cluster: every document under deploy/kubernetes passes kubernetes-validate's
strict schemas (an unknown or misspelt field fails) for the oldest Kubernetes we
document (docs/kubernetes.md) and the newest the package knows; then the promises
docs/kubernetes.md makes — exactly NET_ADMIN + NET_RAW, hostNetwork, probes on the
readiness port at paths agent/readiness.py answers, a grace period longer than the
drain, read-only RBAC — and the ConfigMap's config.yaml parsed by agent.config.
"""

from __future__ import annotations

import dataclasses
import functools
import posixpath
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml

from agent.config import Config, parse_config
from agent.readiness import readiness

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
NAMESPACE = "hostmesh-system"
# docs/kubernetes.md: "Kubernetes 1.29 or newer".
OLDEST = "1.29"
VERSIONS = sorted({OLDEST, kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version())})
READ_ONLY = {"get", "list", "watch"}
# What Kubernetes discovery reads, and nothing more (deploy/kubernetes/rbac.yaml).
RBAC_RESOURCES = {
    ("", "pods"), ("", "nodes"), ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("security.istio.io", "authorizationpolicies"), ("security.istio.io", "peerauthentications"),
    ("networking.istio.io", "destinationrules"), ("networking.istio.io", "virtualservices"),
}


@functools.cache
def manifests() -> tuple[tuple[str, dict], ...]:
    """(file name, document) for every YAML document except the kustomization."""
    out = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d is not None]
    return tuple(out)


def one(kind: str, name: str) -> dict:
    found = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} under deploy/kubernetes, found {len(found)}"
    return found[0]


def pod_spec() -> dict:
    return one("DaemonSet", "hostmesh")["spec"]["template"]["spec"]


def container(name: str) -> dict:
    spec = pod_spec()
    found = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r} in the DaemonSet"
    return found[0]


def config_text_for_this_agent(text: str) -> str:
    """The ConfigMap's config.yaml, minus the ``kubernetes`` section while Config lacks it."""
    if "kubernetes" in {f.name for f in dataclasses.fields(Config)}:
        return text
    # agent/k8s and its Config section are written alongside these manifests; until the
    # section exists, drop it so the rest of the file is still checked against Config.
    data = yaml.safe_load(text)
    data.pop("kubernetes", None)
    return yaml.safe_dump(data, sort_keys=False)


@functools.cache
def agent_config() -> Config:
    text = one("ConfigMap", "hostmesh-config")["data"]["config.yaml"]
    return parse_config(config_text_for_this_agent(text), "deploy/kubernetes/configmap.yaml#config.yaml")


def _id(doc: tuple[str, dict]) -> str:
    f, d = doc
    return f"{f}:{d['kind']}/{d['metadata']['name']}"


# --- the API server would take them -------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", manifests(), ids=_id)
def test_document_is_valid_for_kubernetes_strictly(doc, version):
    try:
        kubernetes_validate.validate(doc[1], version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{_id(doc)} is not valid for Kubernetes {version}: {path}: {e.message}")


def test_kustomization_lists_every_manifest_and_only_those():
    k = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert k["kind"] == "Kustomization" and k["namespace"] == NAMESPACE
    files = sorted(f.name for f in DEPLOY.glob("*.yaml") if f.name != "kustomization.yaml")
    assert sorted(k["resources"]) == files
    assert list(DEPLOY.glob("*.yml")) == [], "use .yaml: *.yml files are neither listed nor tested"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) not installed")
def test_kustomize_renders_the_same_objects_valid():
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, rendered)) == sorted(key(d) for _, d in manifests())
    for d in rendered:
        kubernetes_validate.validate(d, VERSIONS[-1], strict=True)


def test_namespaced_objects_live_in_hostmesh_system():
    one("Namespace", NAMESPACE)
    for f, d in manifests():
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"].get("namespace") == NAMESPACE, _id((f, d))


def test_namespace_admits_the_agent_under_pod_security():
    # hostNetwork, hostPath and NET_ADMIN are beyond the "baseline" level.
    labels = one("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


# --- RBAC: read-only, on exactly what discovery reads -------------------------------


def test_clusterrole_only_reads_what_the_agent_needs():
    rules = one("ClusterRole", "hostmesh")["rules"]
    granted = set()
    for r in rules:
        assert set(r["verbs"]) <= READ_ONLY, f"verbs beyond get/list/watch: {r}"
        assert "nonResourceURLs" not in r and "*" not in r["apiGroups"] + r["resources"], r
        granted |= {(g, res) for g in r["apiGroups"] for res in r["resources"]}
    assert granted == RBAC_RESOURCES


def test_binding_gives_the_role_to_the_daemonsets_service_account():
    b = one("ClusterRoleBinding", "hostmesh")
    one("ServiceAccount", "hostmesh")
    assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "hostmesh"}
    assert b["subjects"] == [{"kind": "ServiceAccount", "name": "hostmesh", "namespace": NAMESPACE}]
    assert pod_spec()["serviceAccountName"] == "hostmesh"


# --- the DaemonSet ------------------------------------------------------------------


def test_agent_runs_in_the_nodes_network_namespace():
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert not spec.get("hostPID") and not spec.get("hostIPC")


def test_agent_has_exactly_net_admin_and_net_raw():
    sc = container("agent")["securityContext"]
    assert sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False


def test_every_container_drops_all_and_has_a_read_only_root():
    spec = pod_spec()
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        if c["name"] != "agent":
            assert not sc["capabilities"].get("add"), f"{c['name']} needs no capability"
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc.get("privileged") is False, c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]


def test_probes_use_the_readiness_port_and_paths_the_agent_answers():
    agent = container("agent")
    port = agent_config().ports.readiness
    assert port == 15021  # SPEC.md
    probes = {k: agent[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["port"] for p in probes.values()} == {port}
    up = SimpleNamespace(ready=True, draining=False)
    draining = SimpleNamespace(ready=True, draining=True)
    for p in probes.values():
        assert readiness(up, p["path"])[0] == 200, p
    # Ready says "send me traffic": 503 while draining. Live must stay 200 while
    # draining, or kubelet would kill an agent that is finishing its connections.
    assert probes["readinessProbe"]["path"] == "/healthz/ready"
    assert readiness(draining, probes["readinessProbe"]["path"])[0] == 503
    assert probes["livenessProbe"]["path"] == "/healthz/live"
    assert readiness(draining, probes["livenessProbe"]["path"])[0] == 200
    assert readiness(draining, probes["startupProbe"]["path"])[0] == 200


def test_grace_period_outlasts_the_drain():
    # agent/serve.py: accepts for up to accept_grace_s, then gives connections deadline_s.
    d = agent_config().drain
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace > d.accept_grace_s + d.deadline_s, (grace, d)


def test_scheduled_on_every_node_and_rolled_one_node_at_a_time():
    ds = one("DaemonSet", "hostmesh")["spec"]
    spec = pod_spec()
    assert spec["priorityClassName"] == "system-node-critical"
    # One toleration without a key and without an effect tolerates every taint.
    assert any(t == {"operator": "Exists"} for t in spec["tolerations"]), spec["tolerations"]
    assert ds["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert ds["selector"]["matchLabels"].items() <= ds["template"]["metadata"]["labels"].items()


def test_node_name_comes_from_the_pod_spec():
    for name in ("agent", "node-ca"):
        env = {e["name"]: e for e in container(name)["env"]}
        assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}, name


def _mounts(c: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def _volume(name: str) -> dict:
    return next(v for v in pod_spec()["volumes"] if v["name"] == name)


def test_config_file_is_the_configmap_at_the_path_the_agent_is_told():
    agent = container("agent")
    args = agent["args"]
    assert args[:2] == ["run", "--config"]
    m = _mounts(agent)[args[2]]
    assert _volume(m["name"])["configMap"]["name"] == "hostmesh-config"
    assert m["subPath"] == "config.yaml"


def test_admin_socket_directory_is_the_nodes_run_hostmesh():
    cfg = agent_config()
    m = _mounts(container("agent"))[posixpath.dirname(cfg.admin.socket)]
    assert _volume(m["name"])["hostPath"] == {"path": "/run/hostmesh", "type": "DirectoryOrCreate"}
    assert not m.get("readOnly")


def test_ca_files_come_from_the_hostmesh_ca_secret_through_node_ca():
    ident = agent_config().identity
    paths = [ident.ca_cert, ident.ca_key, ident.trust_bundle]
    assert all(paths), "identity.ca_cert, ca_key and trust_bundle must be set"
    ca_dirs = {posixpath.dirname(p) for p in paths}
    assert len(ca_dirs) == 1
    ca_dir = ca_dirs.pop()
    # The agent reads them from a volume that the init container filled ...
    agent_m, init_m = _mounts(container("agent"))[ca_dir], _mounts(container("node-ca"))[ca_dir]
    assert agent_m["name"] == init_m["name"] and "emptyDir" in _volume(agent_m["name"])
    script = " ".join(container("node-ca")["command"])
    for p in paths:
        assert f'"$dst/{posixpath.basename(p)}"' in script, f"node-ca does not write {p}"
    # ... from the Secret, which only the init container mounts.
    secret_vols = [v["name"] for v in pod_spec()["volumes"] if "secret" in v]
    assert [_volume(n)["secret"]["secretName"] for n in secret_vols] == ["hostmesh-ca"]
    assert not any(m["name"] in secret_vols for m in _mounts(container("agent")).values())


# --- the ConfigMap's config.yaml -----------------------------------------------------


def test_configmap_config_parses_with_the_agents_schema():
    text = one("ConfigMap", "hostmesh-config")["data"]["config.yaml"]
    assert yaml.safe_load(text)["kubernetes"] == {"enabled": True}
    cfg = agent_config()  # raises ConfigError with path:line on any unknown or bad field
    assert cfg.capture.fail == "closed" and cfg.capture.backend == "nftables"
    assert cfg.ports.readiness_bind == "0.0.0.0", "kubelet probes the node IP, not loopback"


def test_prometheus_scrapes_the_metrics_port_the_agent_listens_on():
    """Istio's Prometheus addon keeps pods annotated prometheus.io/scrape and scrapes
    prometheus.io/port and /path on the pod IP (the node's, under hostNetwork)."""
    ann = one("DaemonSet", "hostmesh")["spec"]["template"]["metadata"]["annotations"]
    cfg = agent_config()
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(cfg.ports.metrics) == "15020"
    assert ann["prometheus.io/path"] == "/metrics"
    assert cfg.ports.metrics_bind == "0.0.0.0", "a Prometheus pod reaches the node IP, not loopback"


# --- the image ------------------------------------------------------------------------


def _stages() -> list[list[str]]:
    """The Containerfile's instructions, continuation lines joined, split into stages;
    ARG defaults before the first FROM substituted into FROM lines."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    args, stages = {}, []
    for ln in lines:
        if ln.startswith("ARG ") and not stages:
            k, _, v = ln[4:].partition("=")
            args[k] = v
        elif ln.startswith("FROM "):
            stages.append([re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ln)])
        elif stages:
            stages[-1].append(ln)
    return stages


def test_image_runs_the_agent_as_the_daemonset_expects():
    *_, runtime = _stages()
    assert re.match(r"FROM python:3\.11-slim\S*$", runtime[0]), runtime[0]
    body = "\n".join(runtime)
    for pkg in ("nftables", "iptables", "iproute2"):
        assert re.search(rf"apt-get install[^\n]*\b{pkg}\b", body), pkg
    assert not re.search(r"\b(gcc|build-essential|make|cargo|rustc)\b", body), "build tools in the runtime stage"
    assert 'ENTRYPOINT ["hostmesh"]' in runtime
    cmd = next(ln for ln in runtime if ln.startswith("CMD "))
    assert yaml.safe_load(cmd[4:]) == container("agent")["args"]


def test_wheel_carries_every_data_file_of_the_agent():
    # The image installs the wheel, not the source tree: a file the build leaves out is
    # missing at run time (capture reads its rule templates from agent/capture/templates).
    # maturin packs all of agent/ except its `exclude` globs: none may hit a data file.
    mat = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["maturin"]
    assert mat["python-source"] == "." and mat["python-packages"] == ["agent"]
    excluded = {p for g in mat.get("exclude", []) for p in ROOT.glob(g)}
    pkg = ROOT / "agent"
    data = {p for p in pkg.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc", ".so")
            and "__pycache__" not in p.parts}
    assert data and sorted(str(p.relative_to(ROOT)) for p in data & excluded) == []
