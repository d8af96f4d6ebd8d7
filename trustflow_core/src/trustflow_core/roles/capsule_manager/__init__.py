"""The Capsule Manager server: the key broker and policy engine (docs/capsule-manager.md). Its
clients (SDK, owner CLI, the ``capsule_manager`` key exchange) are
:mod:`trustflow_core.roles.capsule_manager_client`; what both sides share (error kinds,
freshness claims, report conversion, certificates and votes) is
:mod:`trustflow_core.roles.capsule_manager_protocol`.

Modules, one concept each:

* :mod:`.resource_uri` -- ``{data_uuid}[/partition[/segment[/shard]]]``.
* :mod:`.sealing` -- the storage key and at-rest sealing of data keys.
* :mod:`.db_models`, :mod:`.database` -- SQLAlchemy schema and the transactional database.
* :mod:`.policy` -- rules, CEL constraints, lineage merge; :mod:`.constraint_cost` -- the
  static cost bound of a constraint; :mod:`.constraint_eval` -- one constraint evaluated in
  process; :mod:`.constraint_sandbox` -- the run-time budget (worker processes).
* :mod:`.convert` -- rules and policies <-> protobuf.
* :mod:`.envelope` -- opening requests, authenticating JWS, sealing responses.
* :mod:`.service` -- the 13 RPCs; :mod:`.server` -- the Capsule Manager service on its gRPC
  listener (run, with ``--workers``, by :mod:`trustflow_core.roles._server`).
* :mod:`.database_url` -- the storage URL shown without its password, missing-driver hints.
* :mod:`.private_files` -- data directory 0700, database and keys 0600.
"""
