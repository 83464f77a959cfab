"""Benchmarks and the user simulator (run as scripts: `.venv/bin/python bench/simulate.py`)."""
