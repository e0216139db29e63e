"""Content that crosses registries: proxy caches, the default mirror, virtual projects and
replication."""
