"""Works and tasks (seed 003): recurring works, the scheduler and task history."""
