"""RA Proxy role: ``POST /RaProxy/GetRaCert`` returns the app certificate and an attestation
report binding ``SHA-256(cert_pem || "." || nonce)`` (docs/compat.md#report-binding,
docs/compat.md#brpc-method-names). Command: ``trustflow ra-proxy``."""
