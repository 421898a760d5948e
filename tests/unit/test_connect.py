"""The CONNECT head's values the glue hands the native core (agent/proxy/connect.py):
authority (IPv6 in brackets) and the W3C traceparent round trip. The head itself is the
core's (dataplane/src/connect_tests.rs)."""

import pytest

from agent.proxy.connect import authority, new_traceparent, traceparent_ids

TP, TRACE = new_traceparent(bytes(range(24)))


def test_authority_brackets_ipv6_only():
    assert authority("10.0.1.5", 8080) == "10.0.1.5:8080"
    assert authority("fd00::5", 80) == "[fd00::5]:80"


def test_traceparent_round_trip():
    assert TP == f"00-{bytes(range(16)).hex()}-{bytes(range(16, 24)).hex()}-01" and TRACE == bytes(range(16)).hex()
    assert traceparent_ids(TP) == (TRACE, TP.split("-")[2])
    assert traceparent_ids(" " + TP.upper() + " ") == (TRACE, TP.split("-")[2])


@pytest.mark.parametrize("value", [
    "", "garbage", "01-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-" + "0" * 32 + "-" + "b" * 16 + "-01",
    "00-" + "a" * 32 + "-" + "0" * 16 + "-01", "00-" + "a" * 31 + "-" + "b" * 16 + "-01",
])
def test_traceparent_that_is_not_one_is_ignored(value):
    assert traceparent_ids(value) is None
