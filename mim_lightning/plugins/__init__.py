"""Plugins: hook specifications, the plugin manager, typed registries, built-ins and validation."""
