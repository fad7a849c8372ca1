"""Benchmarks of the three stages. ``make bench`` runs ``benchmarks/run_all.py``."""
