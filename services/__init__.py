"""skyjobs processes: the API, the agents and their domains."""
