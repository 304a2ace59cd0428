"""The messages that services take and return, as plain domain values (no protobuf): one
module per area of the API. ``authswitch.adapters.grpc.codec`` converts them to and from
the wire."""
