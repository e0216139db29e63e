"""SQL for replication endpoints, rules and queues, and virtual projects."""
