"""The dns service: DNS providers, record ownership, propagation checks."""
