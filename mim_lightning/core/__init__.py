"""Core numerics of mim-lightning."""
