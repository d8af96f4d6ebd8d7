"""Gateway role (the Trustflow Envoy): HTTP listeners with prefix routes to upstream clusters,
the JWE filter that opens client envelopes and seals app replies (docs/compat.md#jwe-dialect), plain
TCP proxy listeners, and mTLS ingress listeners / egress clusters built by the ``mtls`` channel
from a communication-group TLS asset, reloaded when its files change
(docs/compat.md#mtls-one-file-trust, :mod:`.mtls`). Command: ``trustflow gateway``. See
docs/online.md and docs/tls-asset.md."""
