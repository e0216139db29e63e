"""Signature verification, pure: bytes and keys in, outcomes with reasons out (no HTTP, no SQL).

- `keys`: public keys and CA certificates as administrators upload them (validated, capped).
- `cosign`: cosign's legacy signatures (`sha256-<hex>.sig` tag manifests, simple-signing).
- `sigstore_bundle`: sigstore bundles v0.3 attached as referrers (message signature, DSSE).
- `notation`: Notary Project JWS envelopes with an x509 chain.
- `trust`: the trust policy model (rules, verifiers, requirements) and its evaluation.
"""
