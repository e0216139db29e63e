"""Stages, promotion-only projects, gates and promotion records."""
