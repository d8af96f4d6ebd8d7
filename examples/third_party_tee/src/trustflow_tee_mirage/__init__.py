"""Mirage: an example third-party TEE backend for Trustflow.

A fake platform with its own report format (:mod:`.report`), signed with ECDSA P-256 by a local
platform key (:mod:`.keys`) and verifiable like tee_sim's. It is **simulated**: it proves nothing
about hardware, its reports are rejected unless a policy allows simulation, and it is never
selected unless named (``--plat mirage``). It exists to show that a TEE backend needs no change
to ``trustflow_core`` (:mod:`.backends` declares what the roles need).
"""
