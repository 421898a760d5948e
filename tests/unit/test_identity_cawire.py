"""The agent's CA messages on the wire (agent.identity.cawire) byte for byte against
protobuf's own serialization of ca.proto (agent.casvc.protocol, the CA service's side),
malformed answers refused, and the agent's start path loading neither grpcio nor
protobuf (the CA call is the core's, dataplane/src/grpc.rs)."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.casvc import protocol
from agent.identity import cawire

CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize("csr, ttl, who", [
    (CSR, 86400, "spiffe://cluster.local/ns/shop/sa/web"),
    (CSR, 0, "spiffe://cluster.local/ns/shop/sa/web"),  # 0: the CA's default lifetime
    (CSR, 3600, None),
    (CSR, 2**40, "spiffe://td/ns/\u00e9/sa/x"),
    ("", 1, ""),
    (CSR * 40, 127, "spiffe://td/ns/a/sa/b"),  # lengths past one varint byte
])
def test_requests_are_protobufs_bytes(csr, ttl, who):
    assert cawire.encode_request(csr, ttl, who) == protocol.serialize(protocol.make_request(csr, ttl, who))
    if who:
        parsed = protocol.parse_request(cawire.encode_request(csr, ttl, who))
        assert parsed.csr == csr and parsed.validity_duration == ttl
        assert protocol.metadata_string(parsed, protocol.IMPERSONATED_IDENTITY) == who


@settings(deadline=None)  # a loaded 2-core machine is no reason to fail a parser test
@given(st.lists(st.text(max_size=300), max_size=6))
def test_responses_decode_as_protobuf_encodes_them(chain):
    assert cawire.decode_response(protocol.serialize_response(protocol.Response(cert_chain=chain))) == chain


def test_unknown_fields_are_skipped():
    extra = b"\x10\x96\x01" + b"\x19" + b"\x00" * 8 + b"\x25" + b"\x00" * 4 + b"\x12\x02ab"  # fields 2, 3, 4, 2
    body = extra + protocol.serialize_response(protocol.Response(cert_chain=["leaf", "root"]))
    assert cawire.decode_response(body) == ["leaf", "root"]


@pytest.mark.parametrize("body, message", [
    (b"\x0a\x05abc", "field 1 runs past the message"),
    (b"\x0a", "truncated varint"),
    (b"\x08\x01", "cert_chain is not a string"),
    (b"\x0b", "wire type 3 of field 1"),
    (b"\x02\x00", "field number 0"),
    (b"\x0a\x01\xff", "cert_chain holds a string that is not UTF-8"),
    (b"\x10" + b"\xff" * 11, "varint over 10 bytes"),
])
def test_malformed_responses_are_refused(body, message):
    with pytest.raises(ValueError, match=message):
        cawire.decode_response(body)


def test_status_names_are_grpcs():
    assert [cawire.status_name(c) for c in (0, 4, 7, 14, 16, 99)] == [
        "OK", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "UNAVAILABLE", "UNAUTHENTICATED", "CODE_99"]
    assert cawire.METHOD == protocol.METHOD


def test_the_agents_start_path_loads_no_grpc_nor_protobuf():
    # a fresh interpreter: this test session imports grpc for the CA service's tests
    code = ("import sys\n"
            "import agent.cli.main, agent.cli.run, agent.serve, agent.app, agent.proxy.native\n"
            "from agent.identity.caclient import CaClient, CaTarget\n"
            "from agent.identity.manager import IdentityManager\n"
            "CaClient(CaTarget('127.0.0.1:1', b'')).close()\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' or m.startswith('google.protobuf'))\n"
            "print(' '.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
