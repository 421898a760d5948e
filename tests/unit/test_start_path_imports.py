"""The agent's start path loads no pydantic (issue 16: the idle agent's RSS; pydantic and the
schemas of the configuration and policy models were 13.5 MiB of it). A fresh interpreter
runs what ``hostmesh run`` does before it listens: the command's modules, the
configuration, the agent, its policy directory, the config dump of the admin API."""

import json
import subprocess
import sys

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-db, namespace: shop, annotations: {istio.io/dry-run: "false"}}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8], serviceAccounts: [web]}}]
    to: [{operation: {ports: ["5432"], methods: [GET]}}]
    when: [{key: source.ip, values: [10.1.0.0/16]}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, portLevelMtls: {"8080": {mode: PERMISSIVE}}}
"""

CHILD = """
import json, sys
from agent.cli import main, run
from agent import preflight, serve
from agent.app import Agent, read_policy_dir
from agent.config import load_config
from agent.rbac.loader import load_object

cfg = load_config(sys.argv[1])
agent = Agent(cfg)
docs, errors = read_policy_dir(cfg.policies.dir, cfg.policies.root_namespace)
load_object({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
             "metadata": {"name": "w", "namespace": "shop"}, "spec": {"action": "ALLOW"}}, "watch")
dump = agent.config_dump()
print(json.dumps({"docs": sorted(d.name for ds in docs.values() for d in ds), "errors": errors,
                  "address": dump["config"]["node"]["address"],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_core", "msgspec"))}))
"""


def test_the_agent_starts_without_pydantic(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "shop.yaml").write_text(POLICIES)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"node: {{name: n1, address: 192.0.2.7}}\nstate_dir: {tmp_path / 'state'}\n"
                   f"admin: {{socket: {tmp_path / 'admin.sock'}}}\npolicies: {{dir: {tmp_path / 'policies'}}}\n"
                   f"telemetry: {{access_log: 'off'}}\n")
    r = subprocess.run([sys.executable, "-c", CHILD, str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out == {"docs": ["deny-db", "strict"], "errors": {}, "address": "192.0.2.7", "loaded": []}


def test_msgspec_is_loaded_for_a_large_file_only():
    # 1.3 MiB of an idle agent: a few policies are read by agent/schema.py alone, a
    # large file by the msgspec fast path (agent/schema_fast.py, agent.rbac.loader.FAST_FROM)
    code = ("import sys\nfrom agent.rbac.loader import FAST_FROM, load_documents\n"
            "from agent.rbac.bench import make_policies\n"
            "n = int(sys.argv[1]) or FAST_FROM\n"
            "docs = load_documents(make_policies(n, 10), 'p.yaml')\n"
            "print(len(docs), 'msgspec' in sys.modules, 'pydantic' in sys.modules)")
    few = subprocess.run([sys.executable, "-c", code, "3"], capture_output=True, text=True, timeout=60)
    many = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True, timeout=60)
    assert few.stdout.split() == ["3", "False", "False"], few.stderr
    assert many.stdout.split() == ["1000", "True", "False"], many.stderr
