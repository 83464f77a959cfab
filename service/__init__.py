"""Attune's service: the FastAPI app and the infrastructure it shares with the workers."""
