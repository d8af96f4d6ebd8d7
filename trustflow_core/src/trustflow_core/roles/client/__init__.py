"""Client of an online TEE service (docs/online.md): attest the app through the RA Proxy,
then exchange JWE envelopes through the gateway. Python API: :class:`.online.OnlineClient`;
command: ``trustflow client``."""
