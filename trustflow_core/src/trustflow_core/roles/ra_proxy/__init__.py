"""RA Proxy role: ``POST /RaProxy/GetRaCert`` returns the app certificate and an attestation
report binding ``SHA-256(cert_pem || "." || nonce)`` (spec proxies.md §2, wire-formats.md §5,
§9.1). Command: ``trustflow ra-proxy``."""
