"""Training: the data module, the two stage modules, the run lifecycle, on Lightning."""
