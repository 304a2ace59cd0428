"""Orchestration: composes the domain rules with the adapters."""
