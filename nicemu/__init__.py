"""nicemu package."""
