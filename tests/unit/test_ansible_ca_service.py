"""The Ansible role's CA-service mode renders, from the inventory alone, the CA
service's per-node allow-list and agent configs that hold a node credential and no
signing key; both load with hostmesh's own parsers."""

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.casvc.authority import load_authority
from agent.config import parse_config
from agent.identity import store

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "hostmesh"
BIN = Path(sys.executable).parent
PLAY = """\
- hosts: hostmesh
  gather_facts: false
  vars_files: [{role}/defaults/main.yml]
  vars:
    hostmesh_node_name: "{{{{ inventory_hostname }}}}"
    hostmesh_config_dir: /etc/hostmesh
  tasks:
    - ansible.builtin.template: {{src: {role}/templates/ca-service.yaml.j2, dest: "{out}/ca-service.yaml", mode: "0600"}}
      run_once: true
    - ansible.builtin.template: {{src: {role}/templates/config.yaml.j2, dest: "{out}/{{{{ inventory_hostname }}}}.yaml", mode: "0600"}}
"""


@pytest.mark.skipif(not (BIN / "ansible-playbook").exists(), reason="ansible-core not installed (the deploy extra)")
def test_role_renders_the_allow_list_from_the_inventory(tmp_path):
    inv = {"hostmesh": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                        "hosts": {
                            "node-0": {"hostmesh_node_address": "10.0.0.10", "hostmesh_pod_cidrs": ["10.244.0.0/24"],
                                       "hostmesh_ca_identities": ["spiffe://cluster.local/ns/shop/sa/web"]},
                            "node-1": {"hostmesh_node_address": "10.0.0.11", "hostmesh_pod_cidrs": ["10.244.1.0/24"],
                                       "hostmesh_workloads": [{"uid": "db-1", "name": "db", "namespace": "data",
                                                               "service_account": "db-sa", "ip": "10.244.1.10"}]}}}}
    (tmp_path / "inv.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "play.yml").write_text(PLAY.format(role=ROLE, out=tmp_path))
    ca = tmp_path / "ca"
    store.init_dir(ca)
    r = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "inv.yml"), str(tmp_path / "play.yml"),
                        "-e", "hostmesh_ca_address=10.0.0.5:15012", "-e", f"hostmesh_ca_dir={ca}"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={"PATH": f"{BIN}:/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    a = load_authority(str(tmp_path / "ca-service.yaml"), dt.datetime.now(dt.UTC))
    assert dict(a.view.identities_on) == {"node-0": {"spiffe://cluster.local/ns/shop/sa/web"},
                                          "node-1": {"spiffe://cluster.local/ns/data/sa/db-sa"}}
    assert a.settings.server_names == ["10.0.0.5"]
    for node in ("node-0", "node-1"):
        ident = parse_config((tmp_path / f"{node}.yaml").read_text(), node).identity
        assert ident.ca_address == "10.0.0.5:15012" and ident.ca_key is None and ident.ca_cert is None
        assert ident.ca_credential_cert == "/etc/hostmesh/ca/credential.pem"
    shutil.rmtree(ca)
