"""Scaling studies: sweeps, result collection, power-law fits, plots, memory plans."""
