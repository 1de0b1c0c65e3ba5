"""Experiments: sweeps (grids of runs), their tables and plots."""
