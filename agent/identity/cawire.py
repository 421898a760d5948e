"""The agent's side of Istio's certificate service on the wire: the two protobuf messages
of ``security/v1alpha1/ca.proto`` the agent sends and reads, encoded and decoded from the
protobuf wire format (protobuf.dev "Encoding": varints, tags ``field << 3 | wire type``,
length-delimited strings and messages), and gRPC's status names. Pure: no I/O, no
protobuf library — so the agent process loads neither grpcio nor protobuf (the CA
*service* keeps them, ``agent.casvc.protocol``; ``tests/unit/test_identity_cawire.py``
checks these bytes against that module's).

Decides nothing about the call (the core's ``grpc.rs`` makes it) or the certificate
(``caclient.check_response``). Must never accept a malformed answer silently: every
truncation, bad tag or wrong type of ``cert_chain`` raises ValueError.
"""

from __future__ import annotations

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

# grpc/doc/statuscodes.md, by number
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5  # wire types (groups, 3 and 4, are refused)


def status_name(code: int) -> str:
    return STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else f"CODE_{code}"


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64: negative numbers are ten bytes of two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, embedded messages)."""
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def encode_request(csr_pem: str, validity_s: int, impersonated: str | None = None) -> bytes:
    """IstioCertificateRequest{csr = 1, validity_duration = 3, metadata = 4 (a
    google.protobuf.Struct: fields = 1, map<string, Value>; Value.string_value = 3)}.
    Fields in number order, defaults (empty, 0) left out, as protobuf serializes them."""
    out = _field(1, csr_pem.encode()) if csr_pem else b""
    if validity_s:
        out += _varint(3 << 3 | _VARINT) + _varint(int(validity_s))
    if impersonated:
        value = _field(3, impersonated.encode())  # Value{string_value}
        entry = _field(1, IMPERSONATED_IDENTITY.encode()) + _field(2, value)  # map entry {key, value}
        out += _field(4, _field(1, entry))  # metadata: Struct{fields}
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift >= 70:
            raise ValueError("varint over 10 bytes")


def _fields(data: bytes):
    """(field number, wire type, value) of each field: an int for varints, bytes otherwise."""
    i = 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == _VARINT:
            value, i = _read_varint(data, i)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            value, i = data[i:i + size], i + size
        elif wire == _LEN:
            size, i = _read_varint(data, i)
            value, i = data[i:i + size], i + size
        else:
            raise ValueError(f"wire type {wire} of field {number}")
        if i > len(data):
            raise ValueError(f"field {number} runs past the message")
        yield number, wire, value


def decode_response(data: bytes) -> list[str]:
    """IstioCertificateResponse.cert_chain (field 1, repeated string), in order; unknown
    fields are skipped as protobuf does."""
    chain = []
    for number, wire, value in _fields(data):
        if number == 1:
            if wire != _LEN:
                raise ValueError("cert_chain is not a string")
            try:
                chain.append(value.decode())
            except UnicodeDecodeError:
                raise ValueError("cert_chain holds a string that is not UTF-8") from None
    return chain
