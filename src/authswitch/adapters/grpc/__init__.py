"""gRPC: the server, the servicers, and the one mapping of errors to the wire."""
