"""Local infrastructure for skyjobs: a single-node KRaft Kafka (Maven Central jars) and a local Postgres."""
