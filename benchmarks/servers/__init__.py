"""Minimal comparison servers: the same gRPC stack as ``authswitch serve`` (grpc.aio on
uvloop, the same protos and server options), different decision paths."""
