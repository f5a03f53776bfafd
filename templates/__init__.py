"""Jinja2 templates of drbook (installed as drbook.templates): agent install scripts,
quiesce hooks, post-failover scripts, reports. Load them with drbook.templating."""
