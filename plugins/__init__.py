"""pylogd built-in plugins."""
