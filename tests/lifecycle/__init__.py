"""Lifecycle: retention, garbage collection, quotas, deleting repositories and projects."""
