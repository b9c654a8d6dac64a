"""Layer 4: the figures (matplotlib)."""
