"""kernel_slowpath package."""
