"""Stream workers: consume the event partitions, denoise, learn per-user profiles (python -m workers)."""
