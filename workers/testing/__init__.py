"""Helpers for testing and benchmarking Secateurs against real processes (`servers`); not used by the service."""
