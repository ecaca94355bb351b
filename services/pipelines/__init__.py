"""Pipelines (seed 002): the language (spec, expressions, transformations) and its executors."""
