"""Event and command types of every stream: the wire contract, one module per stream."""
