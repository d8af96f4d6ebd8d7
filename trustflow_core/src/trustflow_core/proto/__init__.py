"""Generated protobuf and gRPC code of the Trustflow wire protocol.

Produced by scripts/gen_proto.py from proto/; do not edit. Import messages from
``trustflow_core.proto.secretflowapis.v2...``.
"""
