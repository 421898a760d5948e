"""A synthetic cluster for the ``discovery`` benchmark: pods of realistic size (about
7 KB of JSON each, with ``managedFields``, containers, volumes and status the way the
API server returns them), 100 nodes, one Service with one EndpointSlice per ten pods,
200 AuthorizationPolicies; and the watch events a busy cluster sends.

Pure: objects in, serialised bytes out; deterministic for a given size. It decides
nothing about discovery and never talks to the network.
"""

from __future__ import annotations

import json

NODES = 100
POLICIES = 200
NAMESPACES = 50
THIS_NODE = "node-0"


def _fields(prefix: str, names: list[str]) -> dict:
    return {f"f:{prefix}": {f"f:{n}": {} for n in names}}


def _pod_template() -> str:
    container = {
        "name": "app", "image": "registry.example.com/team/@APP@:1.24.3",
        "args": ["--port=8080", "--log-level=info", "--metrics-port=9090"],
        "env": [{"name": f"SETTING_{i}", "value": f"value-{i}-abcdefghij"} for i in range(22)],
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"},
                  {"containerPort": 9090, "name": "metrics", "protocol": "TCP"}],
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10},
        "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": "kube-api-access",
                          "readOnly": True}],
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    managed = [
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": "2026-11-23T07:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {},
                                                                          "f:rev": {}},
                                     "f:ownerReferences": {".": {}, 'k:{"uid":"@UID@"}': {}}},
                      "f:spec": {'f:containers': {'k:{"name":"app"}': {
                          **_fields("env", [f'k:{{"name":"SETTING_{i}"}}' for i in range(22)]),
                          **_fields("ports", ['k:{"containerPort":8080,"protocol":"TCP"}',
                                              'k:{"containerPort":9090,"protocol":"TCP"}']),
                          "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {},
                          "f:readinessProbe": {}, "f:terminationMessagePath": {}}},
                          "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {},
                          "f:schedulerName": {}, "f:securityContext": {}, "f:serviceAccount": {},
                          "f:serviceAccountName": {}, "f:terminationGracePeriodSeconds": {}}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "@PROBE@",
         "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:status": {"f:conditions": {f'k:{{"type":"{t}"}}': {".": {}, "f:lastProbeTime": {},
                                                                              "f:lastTransitionTime": {},
                                                                              "f:status": {}, "f:type": {}}
                                                    for t in ("ContainersReady", "Initialized", "PodReadyToStartContainers",
                                                              "Ready", "PodScheduled")},
                                   "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {},
                                   "f:podIP": {}, "f:podIPs": {".": {}, 'k:{"ip":"@IP@"}': {".": {}, "f:ip": {}}},
                                   "f:startTime": {}}}},
    ]
    pod = {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": "@NAME@", "generateName": "@APP@-7d4b9c8f6d-", "namespace": "@NS@", "uid": "@UID@",
            "resourceVersion": "@RV@", "creationTimestamp": "2026-11-23T07:00:00Z",
            "labels": {"app": "@APP@", "pod-template-hash": "7d4b9c8f6d", "rev": "@REV@"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-23T06:59:00Z",
                            "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "@APP@-7d4b9c8f6d",
                                 "uid": "@UID@", "controller": True, "blockOwnerDeletion": True}],
            "managedFields": managed,
        },
        "spec": {
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "containers": [container], "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "@APP@", "serviceAccount": "@APP@",
            "nodeName": "@NODE@", "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": t, "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": "@PROBE@"}
                           for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                     "PodScheduled")],
            "hostIP": "@HOSTIP@", "hostIPs": [{"ip": "@HOSTIP@"}], "podIP": "@IP@", "podIPs": [{"ip": "@IP@"}],
            "startTime": "2026-11-23T07:00:00Z",
            "containerStatuses": [{"name": "app", "state": {"running": {"startedAt": "2026-11-23T07:00:02Z"}},
                                   "lastState": {}, "ready": True, "restartCount": 0,
                                   "image": "registry.example.com/team/@APP@:1.24.3",
                                   "imageID": "registry.example.com/team/@APP@@sha256:" + "0f" * 32,
                                   "containerID": "containerd://" + "ab" * 32, "started": True}],
            "qosClass": "Burstable",
        },
    }
    return json.dumps(pod, separators=(",", ":"))


_POD = _pod_template()


class Cluster:
    """``pods`` pods in ``pods // 10`` services; each call that changes something
    returns the serialised object and moves the cluster's resourceVersion."""

    def __init__(self, pods: int) -> None:
        self.n = pods
        self.rv = 1000
        self.rev = [0] * pods
        self.ready = [True] * pods
        self.policy_rev = [0] * POLICIES

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    @staticmethod
    def ip(i: int) -> str:
        return f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"

    @staticmethod
    def app(i: int) -> str:
        return f"app-{i // 10}"

    def pod(self, i: int, probe: str = "2026-11-23T07:00:05Z") -> bytes:
        node = i % NODES
        s = _POD
        for k, v in (("@NAME@", f"{self.app(i)}-7d4b9c8f6d-{i:06d}"), ("@APP@", self.app(i)),
                     ("@NS@", f"ns-{(i // 10) % NAMESPACES}"), ("@UID@", f"00000000-0000-4000-8000-{i:012d}"),
                     ("@RV@", str(self.rv)), ("@REV@", str(self.rev[i])), ("@NODE@", f"node-{node}"),
                     ("@PROBE@", probe), ("@HOSTIP@", f"192.168.{node // 256}.{node % 256 + 1}"),
                     ("@IP@", self.ip(i))):
            s = s.replace(k, v)
        return s.encode()

    def node(self, j: int) -> bytes:
        return json.dumps({"kind": "Node", "apiVersion": "v1", "metadata": {
            "name": f"node-{j}", "uid": f"node-uid-{j}", "resourceVersion": str(self.rv),
            "labels": {"kubernetes.io/hostname": f"node-{j}", "kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": f"10.{128 + j // 256}.{j % 256}.0/24", "podCIDRs": [f"10.{128 + j // 256}.{j % 256}.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.{j // 256}.{j % 256 + 1}"},
                                     {"type": "Hostname", "address": f"node-{j}"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}).encode()

    def service(self, k: int) -> bytes:
        return json.dumps({"kind": "Service", "apiVersion": "v1", "metadata": {
            "name": f"app-{k}", "namespace": f"ns-{k % NAMESPACES}", "uid": f"svc-uid-{k}",
            "resourceVersion": str(self.rv), "labels": {"app": f"app-{k}"}},
            "spec": {"type": "ClusterIP", "clusterIP": f"10.96.{k // 256}.{k % 256}",
                     "clusterIPs": [f"10.96.{k // 256}.{k % 256}"], "selector": {"app": f"app-{k}"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
            "status": {"loadBalancer": {}}}).encode()

    def slice(self, k: int) -> bytes:
        eps = [{"addresses": [self.ip(i)], "conditions": {"ready": self.ready[i], "serving": True,
                                                          "terminating": False},
                "nodeName": f"node-{i % NODES}", "targetRef": {"kind": "Pod", "namespace": f"ns-{k % NAMESPACES}",
                                                               "name": f"{self.app(i)}-7d4b9c8f6d-{i:06d}"}}
               for i in range(k * 10, min(self.n, k * 10 + 10))]
        return json.dumps({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": {
            "name": f"app-{k}-abcde", "namespace": f"ns-{k % NAMESPACES}", "resourceVersion": str(self.rv),
            "labels": {"kubernetes.io/service-name": f"app-{k}", "endpointslice.kubernetes.io/managed-by":
                       "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps}).encode()

    def policy(self, p: int) -> bytes:
        k = p * max(1, (self.n // 10) // POLICIES) % max(1, self.n // 10)
        return json.dumps({"kind": "AuthorizationPolicy", "apiVersion": "security.istio.io/v1", "metadata": {
            "name": f"allow-{p}", "namespace": f"ns-{k % NAMESPACES}", "resourceVersion": str(self.rv),
            "generation": 1 + self.policy_rev[p], "uid": f"ap-uid-{p}"},
            "spec": {"selector": {"matchLabels": {"app": f"app-{k}"}}, "action": "ALLOW", "rules": [
                {"from": [{"source": {"principals": [f"cluster.local/ns/ns-{(k + 1) % NAMESPACES}/sa/app-{k + 1}",
                                                     f"cluster.local/ns/ns-{k % NAMESPACES}/sa/client-{self.policy_rev[p]}"]}}],
                 "to": [{"operation": {"ports": ["8080"]}}]}]}}).encode()

    def lists(self) -> dict[str, list[bytes]]:
        return {"pods": [self.pod(i) for i in range(self.n)], "nodes": [self.node(j) for j in range(NODES)],
                "services": [self.service(k) for k in range((self.n + 9) // 10)],
                "endpointslices": [self.slice(k) for k in range((self.n + 9) // 10)],
                "authorizationpolicies": [self.policy(p) for p in range(POLICIES)], "peerauthentications": []}

    # ---- events: (kind, serialised event line, relevant to discovery) ----------------------
    def event(self, what: str, seq: int) -> tuple[str, bytes, str]:
        rv = self.next_rv()
        if what == "pod":  # a label discovery keeps changes
            i = (seq * 7919) % self.n
            self.rev[i] += 1
            kind, obj = "pods", self.pod(i)
        elif what == "status":  # a probe time only: nothing discovery reads
            i = (seq * 104729) % self.n
            kind, obj = "pods", self.pod(i, probe=f"2026-11-23T08:{seq // 60 % 60:02d}:{seq % 60:02d}Z")
        elif what == "slice":  # an endpoint turns ready / not ready
            i = (seq * 31) % self.n
            self.ready[i] = not self.ready[i]
            kind, obj = "endpointslices", self.slice(i // 10)
        else:  # a policy's principals change
            p = seq % POLICIES
            self.policy_rev[p] += 1
            kind, obj = "authorizationpolicies", self.policy(p)
        return kind, b'{"type":"MODIFIED","object":' + obj + b"}", rv
