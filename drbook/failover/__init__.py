"""Bringing machines up in Azure: decisions (pure) beside the steps that apply them."""
