"""Benchmarks: scripts that print markdown tables and save plots (see bench/README.md). Not tests."""
