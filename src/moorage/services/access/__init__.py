"""Who may do what: accounts, credentials, tokens, sign-in throttling, projects and roles,
the audit log."""
