"""Benchmarks of the three stages (issue 6). ``make bench`` runs ``benchmarks/run_all.py``."""
