"""authswitch: a card authorisation switch (on-ledger and off-ledger) over gRPC."""

__version__ = "0.1.0"
