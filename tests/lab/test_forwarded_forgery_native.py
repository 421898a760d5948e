"""test_forwarded_forgery.py on the native engine: a forged ``Forwarded`` on the HTTP/1.1
CONNECT path (node address :15008) is judged by the verified identity and counted,
exactly as with the Python engines (native.py uses inbound.claimed_source)."""

import pytest

from tests.lab import test_forwarded_forgery as f
from tests.lab.conftest import lab_up


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("kforge", "--engine", "native", topology=f.TOPOLOGY, tmp=tmp_path_factory.mktemp("kforge")) as lab:
        lab.serve_http("web", 8080)
        yield lab


test_a_forged_forwarded_is_judged_by_the_verified_identity = f.test_a_forged_forwarded_is_judged_by_the_verified_identity
