"""Istio's certificate service on the wire: the messages of ``ca.proto`` and the method
path, for the CA service (``agent.casvc.server``). The agent's client encodes the same
messages without protobuf (``agent.identity.cawire``, byte-compared with this module in
the unit tests) so the agent never loads it. Decides nothing; never opens a connection.

The descriptors are built here at runtime from the field numbers of ``ca.proto``
instead of committing protoc output: generated ``_pb2`` modules are tied to the protoc
that made them (protobuf >= 5.26 refuses to import code from a newer generator), and the
OTLP exporter already pins protobuf for us; three messages do not justify a build step
or a grpcio-tools dependency. ``tests/unit/test_casvc_protocol.py`` checks the bytes.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE = "istio.v1.auth"
SERVICE = f"{PACKAGE}.IstioCertificateService"
METHOD = f"/{SERVICE}/CreateCertificate"
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="hostmesh/istio/v1/auth/ca.proto", package=PACKAGE,
                                           syntax="proto3", dependency=["google/protobuf/struct.proto"])
    req = f.message_type.add(name="IstioCertificateRequest")
    req.field.add(name="csr", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="csr")
    req.field.add(name="validity_duration", number=3, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL,
                  json_name="validityDuration")
    req.field.add(name="metadata", number=4, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                  type_name=".google.protobuf.Struct", json_name="metadata")
    resp = f.message_type.add(name="IstioCertificateResponse")
    resp.field.add(name="cert_chain", number=1, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED,
                   json_name="certChain")
    svc = f.service.add(name="IstioCertificateService")
    svc.method.add(name="CreateCertificate", input_type=f".{PACKAGE}.IstioCertificateRequest",
                   output_type=f".{PACKAGE}.IstioCertificateResponse")
    return f


def _classes():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    fd = pool.AddSerializedFile(_file().SerializeToString())
    return (message_factory.GetMessageClass(fd.message_types_by_name["IstioCertificateRequest"]),
            message_factory.GetMessageClass(fd.message_types_by_name["IstioCertificateResponse"]))


Request, Response = _classes()


def make_request(csr_pem: str, validity_s: int, impersonated: str | None = None):
    req = Request(csr=csr_pem, validity_duration=int(validity_s))
    if impersonated:
        req.metadata.fields[IMPERSONATED_IDENTITY].string_value = impersonated
    return req


def metadata_string(req, key: str) -> str | None:
    """A string value of the request's metadata Struct, None when absent or not a string."""
    if not req.HasField("metadata") or key not in req.metadata.fields:
        return None
    v = req.metadata.fields[key]
    return v.string_value if v.WhichOneof("kind") == "string_value" else None


def parse_request(data: bytes):
    """Bytes off the wire -> Request; raises ValueError (``DecodeError``) when malformed."""
    req = Request()
    req.ParseFromString(data)
    return req


serialize = Request.SerializeToString
serialize_response = Response.SerializeToString
parse_response = Response.FromString
