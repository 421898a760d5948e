"""`hostmesh demo`, the README's first command, runs every step green: the lab, a tunnelled
request, the client's own IP at the server, both DENY policies, the access log, iperf3
through the mesh (a policy that denied the TCP port would fail it), and lab down."""

from tests.lab.conftest import hm


def test_demo_passes_every_step_and_leaves_no_lab():
    r = hm("demo", timeout=300)
    steps = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("[")]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert steps and all(s.startswith("[PASS]") for s in steps), steps
    assert any("Gbit/s through two agents" in s for s in steps), steps
    assert any("connection record(s)" in s for s in steps), steps
    assert hm("lab", "status", "--name", "demo").returncode != 0  # torn down
