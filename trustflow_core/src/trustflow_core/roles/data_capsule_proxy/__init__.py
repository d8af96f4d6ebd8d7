"""The Data Capsule Proxy role: decrypts a TEE app's inputs with keys released by the key
exchange, and encrypts, stores and registers its results (docs/compat.md#dcp-protocol)."""
