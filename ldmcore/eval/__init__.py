"""Fidelity metrics for the built-in tasks, computed by models independent of the generator."""
