"""The certificate authority service (`hostmesh ca serve`): Istio's
``IstioCertificateService`` with node authorization, so no node holds a signing key.
``protocol`` (the wire), ``decide`` (who may have which certificate, pure),
``settings`` (its configuration file), ``server`` (the gRPC shell), ``audit``."""
