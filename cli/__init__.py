"""The `homeport` command line."""
