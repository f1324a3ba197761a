"""Manifests from git: pull mode (see source.py)."""
