"""Built-in links, losses and activations, registered through the same hooks as any plugin."""
