"""The native core's pure surface without root: its SPIFFE checks agree with the Python
rules (identity/validate.py) on every invalid SVID of identity/testing.py, and the
config names what replaced the Python data plane's settings."""

from __future__ import annotations

import datetime as dt

import pytest

from agent import dataplane
from agent.config import ConfigError, parse_config
from agent.identity import ca, testing
from agent.identity.validate import validate_peer

pytestmark = pytest.mark.skipif(not dataplane.available()[0], reason="agent._dataplane not built")

SID = "spiffe://cluster.local/ns/shop/sa/web"


def test_core_and_python_give_the_same_verdict_for_every_svid():
    pki = testing.make_pki()
    now = dt.datetime.now(dt.UTC)
    roots = ca.load_certs(pki.bundle_pem)
    cases = {"good": pki.svid(SID), **testing.bad_svids(pki, SID)}
    for name, (chain, _key) in cases.items():
        py = validate_peer(ca.load_certs(chain), roots, "cluster.local", now)
        native = dataplane.verify(chain, pki.bundle_pem, "cluster.local", now)
        assert (native.ok, native.spiffe_id, native.reason) == (py.ok, py.spiffe_id, py.reason), name
    # the expected identity (the client's check of a server)
    chain = pki.svid(SID)[0]
    other = "spiffe://cluster.local/ns/shop/sa/other"
    assert dataplane.verify(chain, pki.bundle_pem, "cluster.local", now, other, "server").reason == \
        validate_peer(ca.load_certs(chain), roots, "cluster.local", now, other).reason == "unexpected_identity"
    # time is the caller's: the same chain expires
    later = now + dt.timedelta(days=3)
    assert dataplane.verify(chain, pki.bundle_pem, "cluster.local", later).reason == "expired"


def test_garbage_is_no_certificate_and_a_bad_bundle_is_an_error():
    pki = testing.make_pki()
    now = dt.datetime.now(dt.UTC)
    assert dataplane.verify(b"not pem", pki.bundle_pem, "cluster.local", now).reason == "no_certificate"
    with pytest.raises(ValueError):
        dataplane.verify(pki.svid(SID)[0], b"junk", "cluster.local", now)


@pytest.mark.parametrize("body, line, message", [
    ("  workers: 2\n", 3, "dataplane.workers: worker processes were removed: the native core's dataplane.threads"),
    ("  threads: 2\n  engine: epoll\n", 4, "dataplane.engine: engine epoll was removed with the Python data plane"),
    ("  engine: trio\n", 3, "dataplane.engine: engine trio was removed with the Python data plane"),
    ("  tunnel_streams: false\n", 3, "dataplane.tunnel_streams: tunnel_streams is no longer a setting: "
                                     "hostmesh-streams/1"),
    ("  buffer_bytes: 65536\n", 3, "dataplane.buffer_bytes: buffer_bytes is no longer a setting"),
])
def test_the_python_data_planes_settings_name_what_replaced_them(body, line, message):
    with pytest.raises(ConfigError) as e:
        parse_config("node: {name: n, address: 10.0.0.1}\ndataplane:\n" + body, "c.yaml")
    assert str(e.value).startswith(f"c.yaml:{line}: {message}"), str(e.value)


def test_native_is_the_default_and_threads_are_its_cores():
    assert parse_config("node: {name: n, address: 10.0.0.1}\n", "c.yaml").dataplane.engine == "native"
    cfg = parse_config("node: {name: n, address: 10.0.0.1}\ndataplane: {engine: native, threads: 2, workers: 1}\n",
                       "c.yaml")
    assert (cfg.dataplane.engine, cfg.dataplane.threads) == ("native", 2)
    assert "workers" not in cfg.dataplane.to_dict()  # accepted only as 1, for old configs
