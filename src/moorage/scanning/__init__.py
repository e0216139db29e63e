"""Package inventories of image layers, for vulnerability scanning.

`layers` streams one layer blob (tar, tar+gzip or tar+zstd) under hard limits, `catalog` turns the
files it wants into packages (one module per package manager or language), and `squash` merges
the per-layer results the way the OCI image spec stacks layers. Everything here is pure: bytes
in, dataclasses out; storage, HTTP and scheduling live elsewhere.
"""
