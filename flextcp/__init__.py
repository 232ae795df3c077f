"""flextcp package."""
