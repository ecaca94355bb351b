"""Errors of the pipeline area, each with structured fields and a `retryable` flag.

    PipelineError
      ├── SpecError          400  the spec does not parse; `path` points at the element ("$[2][1]")
      ├── ExpressionError    400  an expression does not parse or fails; `expression` names it
      │     └── BudgetExceeded     the expression ran out of steps, time or memory
      ├── LimitExceeded      400  a run would pass a configured limit (fan-out width, steps, body size)
      └── NotAllowed         403  a step names a host outside the allow-list
"""

from __future__ import annotations


class PipelineError(Exception):
    status = 500
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecError(PipelineError):
    """The spec is invalid at `path` (a JSON-path-like pointer: `$[2][1]`)."""

    status = 400

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ExpressionError(PipelineError):
    status = 400

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(f"expression {expression[:200]!r}: {reason}")
        self.expression = expression
        self.reason = reason


class BudgetExceeded(ExpressionError):
    """An expression went over its step, time or size budget."""


class LimitExceeded(PipelineError):
    status = 400


class NotAllowed(PipelineError):
    status = 403
