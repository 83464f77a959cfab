"""Attune's domain: pure code with no I/O (events, features, denoising, estimators, conditioning)."""
