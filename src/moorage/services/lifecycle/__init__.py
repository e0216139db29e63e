"""Lifecycle: pull tracking, retention, garbage collection, quotas."""
