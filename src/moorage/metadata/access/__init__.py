"""SQL for accounts, groups, robots, tokens, projects, roles and the audit chain."""
