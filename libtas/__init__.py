"""libtas package."""
