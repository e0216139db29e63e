"""SQL for stages, gates, approvals and promotion records."""
