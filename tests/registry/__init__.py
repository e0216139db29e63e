"""The OCI distribution API: pushes, pulls, uploads, deletes, referrers, bad input, crashes, real
clients."""
