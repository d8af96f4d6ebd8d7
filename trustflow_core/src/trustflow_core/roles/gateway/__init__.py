"""Gateway role (the Trustflow Envoy): HTTP listeners with prefix routes to upstream clusters,
the JWE filter that opens client envelopes and seals app replies (spec proxies.md §4), and
plain TCP proxy listeners. Command: ``trustflow gateway``. See docs/online.md."""
