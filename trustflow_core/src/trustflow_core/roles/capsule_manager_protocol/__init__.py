"""What both sides of the Capsule Manager protocol share: the server
(:mod:`trustflow_core.roles.capsule_manager`) and its clients
(:mod:`trustflow_core.roles.capsule_manager_client`). Pure Python, cryptography and the
generated protobuf messages only: no gRPC, SQLAlchemy or CEL.

* :mod:`.errors` -- the in-band error model (kinds -> upstream status codes).
* :mod:`.freshness` -- the request freshness claims (``iat``/``jti``/digest): made by clients,
  checked by the server.
* :mod:`.reports` -- attestation reports <-> ``UnifiedAttestationReport``.
* :mod:`.messages` -- a sealed envelope as the protocol's ``Jwe`` message.
* :mod:`.certs` -- certificate chains, party ids, RS256; :mod:`.votes` -- data-export
  certificates (signing and verification).
"""
