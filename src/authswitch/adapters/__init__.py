"""Adapters: every piece of I/O (Postgres, Redis, gRPC, the client's DecisionService)."""
