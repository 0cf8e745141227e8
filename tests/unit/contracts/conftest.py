"""Shared fixtures of the contract tests."""

from tests.unit.contracts.test_supply import chain

__all__ = ["chain"]
