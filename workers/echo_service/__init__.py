"""echo_service: answers its argument back, after an optional delay (benchmarks and tests)."""
