"""The HTTP API: command endpoints produce to Kafka, query endpoints read the projections."""
