"""Handlers of the API, one module per area; each module has a `routes` (api/table.py)."""
