"""Stages, promotion-only projects, promotion gates and signed promotion records."""
