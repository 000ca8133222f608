"""Helpers shared by the tests: local servers that speak real protocols, tiny models."""
