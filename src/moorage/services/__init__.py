"""Registry services: the use cases (push, pull, delete, list) over storage and metadata."""
