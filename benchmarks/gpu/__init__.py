"""Benchmarks prepared for a CUDA machine (``run_device.sh`` runs them there)."""
