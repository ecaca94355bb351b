"""The job manager: lifecycle decisions, the faust agents, the executor."""
