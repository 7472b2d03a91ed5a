"""The vocabulary every layer shares: errors, clocks, secrets, credentials, bounded I/O, metrics."""
