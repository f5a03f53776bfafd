"""Prefect flows of drbook."""
