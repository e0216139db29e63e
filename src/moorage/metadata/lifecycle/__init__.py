"""SQL access for lifecycle: pull tracking, retention policies and their runs."""
