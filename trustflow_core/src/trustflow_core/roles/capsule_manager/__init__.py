"""The Capsule Manager role: the key broker and policy engine (spec capsule-manager.md).

Modules, one concept each:

* :mod:`.errors` -- the in-band error model (kinds -> upstream status codes).
* :mod:`.resource_uri` -- ``{data_uuid}[/partition[/segment[/shard]]]``.
* :mod:`.sealing` -- the storage key and at-rest sealing of data keys.
* :mod:`.storage_models`, :mod:`.storage` -- SQLAlchemy schema and transactional store.
* :mod:`.policy` -- rules, CEL constraints, lineage merge; :mod:`.constraint_cost` -- the
  static cost bound of a constraint; :mod:`.constraint_sandbox` -- the run-time budget (worker
  processes).
* :mod:`.votes` -- data-export certificates (signing and verification).
* :mod:`.envelope` -- opening requests, authenticating JWS, sealing responses.
* :mod:`.service` -- the 13 RPCs; :mod:`.server` -- the ``grpc.aio`` server.
* :mod:`.storage_url` -- the storage URL shown without its password, missing-driver hints.
* :mod:`.private_files` -- data directory 0700, database and keys 0600.
* :mod:`.port_claim` -- one Capsule Manager per port (``--workers`` share it among themselves).
* :mod:`.client` -- the Python client API (owners and apps); :mod:`.keyexchange` -- the
  ``capsule_manager`` KeyExchange backend; :mod:`.cms_cli` -- ``trustflow cms``.
"""
