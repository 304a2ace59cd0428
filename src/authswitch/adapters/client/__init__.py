"""Clients' endpoints: their DecisionService over gRPC, and HTTPS webhooks."""
