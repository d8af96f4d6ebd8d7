"""The Capsule Manager's client side: what owners, apps and the Data Capsule Proxy use to talk
to a Capsule Manager (:mod:`trustflow_core.roles.capsule_manager`, the server). It needs gRPC,
protobuf and the ``jwe`` channel (the ``data-capsule-proxy`` extra), never the server's
SQLAlchemy or CEL; shared protocol pieces come from
:mod:`trustflow_core.roles.capsule_manager_protocol`.

* :mod:`.client` -- the Python client API (owners and apps).
* :mod:`.keyexchange` -- the ``capsule_manager`` KeyExchange backend (registered by the core's
  own plugin, :mod:`trustflow_core.builtin`).
* :mod:`.cms_cli` -- ``trustflow cms``, the owner CLI (:mod:`.commands`).
"""
