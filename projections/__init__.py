"""Read models: one module per projection, folded from the event topics into Postgres."""
