"""Client of an online TEE service (spec scenarios.md §1): attest the app through the RA Proxy,
then exchange JWE envelopes through the gateway. Python API: :class:`.online.OnlineClient`;
command: ``trustflow client``."""
