"""invertnet (minimal, in progress)."""
