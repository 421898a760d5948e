"""test_dataplane.py's behaviour on the native engine: VIP balancing and failover,
many concurrent connections, bounded memory behind a slow reader, drain with a
replacement agent — the same real clients and checks, agents running the Rust core."""

import pytest

from tests.lab import test_dataplane as d
from tests.lab.conftest import lab_up


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    with lab_up("cnatdp", "--engine", "native", topology=d.TOPOLOGY, tmp=tmp_path_factory.mktemp("cnatdp")) as lab:
        for p in ("a", "b", "c"):
            lab.serve_http(p, 8080)
        yield lab


def test_the_lab_runs_the_native_core(dp):
    assert dp.admin(0, "GET", "/v1/stats")[1]["engine"]["engine"] == "native"


for _name in dir(d):
    if _name.startswith("test_"):
        globals()[_name] = getattr(d, _name)
