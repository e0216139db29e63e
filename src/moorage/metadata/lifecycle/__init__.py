"""Stores of the lifecycle context: quotas, retention, garbage collection."""
