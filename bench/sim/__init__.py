"""The user simulator: synthetic users with known preferences driving the real API, workers and gateway."""
