"""Benchmarks: `make bench` runs them all against real Postgres and NATS."""
