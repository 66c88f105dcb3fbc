"""The backup service (issue 14): encrypted, deduplicated, off-site backups (in progress)."""
