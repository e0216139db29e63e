"""Proxy caches, the default mirror, virtual projects and replication."""
