"""Certificates: ACME accounts and orders, the self-signed fallback and custom uploads."""
