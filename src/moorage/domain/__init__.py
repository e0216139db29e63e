"""The pure domain core: names, digests, references, manifests, errors. No HTTP, no SQL."""
