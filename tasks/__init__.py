"""Prefect tasks of drbook."""
