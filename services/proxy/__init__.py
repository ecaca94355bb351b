"""Worker services and the task proxy (seed 004): the registry, the router and their pure decisions."""
