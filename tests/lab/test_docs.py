"""The docs run: every shell block in README.md and docs/*.md marked ``<!-- runnable -->``
is executed, in order, against a lab (``edocs``), so the commands the docs show cannot
drift from what hostmesh does (docs/cli.md "Shell blocks in these docs").

Each block runs with ``bash -e -o pipefail`` in a scratch directory holding a ``.venv``
link, ``hostmesh`` on PATH, ``HOSTMESH_LAB=edocs`` and ``HOSTMESH_ADMIN_SOCKET`` =
node-0's socket. A block that runs ``hostmesh lab up`` starts with no lab and must take
it down; every other block gets the 2-node, 2-pods-per-node lab the docs describe."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.docs_blocks import ROOT, all_blocks
from tests.lab.conftest import hm

LAB = "edocs"
RUNNABLE = [b for b in all_blocks() if b.mark == "runnable"]
BLOCK_TIMEOUT_S = 120


class DocsLab:
    def __init__(self) -> None:
        self.up = False

    def ensure(self, want_up: bool) -> None:
        if want_up and not self.up:
            hm("lab", "down", "--name", LAB)
            r = hm("lab", "up", "--name", LAB, "--nodes", "2", "--pods-per-node", "2", timeout=120)
            assert r.returncode == 0, r.stderr
        elif not want_up:
            hm("lab", "down", "--name", LAB)
        self.up = want_up


@pytest.fixture(scope="module")
def docs_lab():
    lab = DocsLab()
    try:
        yield lab
    finally:
        hm("lab", "down", "--name", LAB)


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_runnable_block(block, docs_lab, tmp_path):
    makes_lab = "lab up" in block.text
    docs_lab.ensure(not makes_lab)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "HOSTMESH_LAB": LAB,
           "HOSTMESH_ADMIN_SOCKET": f"/run/hostmesh/lab/{LAB}/node-0/admin.sock"}
    out = tmp_path / "out.txt"
    with open(out, "w") as f:  # a file, not a pipe: a block's background job must not hold the test
        try:
            r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=tmp_path, env=env,
                               stdout=f, stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT_S)
            code = r.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if makes_lab:
        docs_lab.up = Path(f"/run/hostmesh/lab/{LAB}/state.json").exists()
    assert code == 0, f"{block.where}: exit {code}\n{block.text}\n--- output ---\n{out.read_text()[-3000:]}"
