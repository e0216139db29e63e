"""SQL for scans, scanner adapters, vulnerability policies and signature trust."""
