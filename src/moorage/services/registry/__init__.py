"""The OCI registry's use cases: pushes, uploads, pulls from every source, immutable tags."""
