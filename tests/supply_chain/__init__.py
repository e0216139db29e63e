"""Catalogs, vulnerability data and matching, scans, SBOMs, scanner adapters, policies,
signatures."""
