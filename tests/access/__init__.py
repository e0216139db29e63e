"""Accounts, credentials, tokens, roles and grants, TLS, throttling, outbound guards and the audit
log."""
