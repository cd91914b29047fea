"""Noise schedules, prediction-type conversions, samplers and guidance."""
